"""My jobs and a job's page: what each job cost, how long it waited and ran; only one's own."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.files.base import ContentFile
from django.urls import reverse
from django.utils import timezone

from accounts import ledger
from generation.models import Job
from tests.generation.test_pages import make_image, page_data, png_bytes

pytestmark = pytest.mark.django_db


def finished_job(owner, checkpoint, *, price="6", status=Job.Status.SUCCEEDED, error=""):
    """A job that waited 3 s, ran 4.5 s and settled its hold as a real one does."""
    image = make_image(owner, checkpoint)
    job = image.job
    start = timezone.now() - timedelta(minutes=1)
    Job.objects.filter(pk=job.pk).update(
        status=status,
        price=Decimal(price),
        created_at=start,
        started_at=start + timedelta(seconds=3),
        finished_at=start + timedelta(seconds=7.5),
        error=error,
        total_steps=7,
        steps_done=7,
    )
    ledger.hold(owner, Decimal(price), job.pk)
    if status == Job.Status.SUCCEEDED:
        ledger.capture(job.pk)
    else:
        ledger.release(job.pk)
    job.refresh_from_db()
    return job


def test_alice_sees_her_jobs_with_status_model_size_steps_charge_and_timings(
    client, alice, catalogue
):
    finished_job(alice, catalogue["a"], price="6")
    client.force_login(alice)
    page = client.get(reverse("my_jobs")).content.decode()
    for shown in ("model-a", "64×64", "Succeeded", "6.00", "3.0 s", "4.5 s"):
        assert shown in page


def test_a_failed_job_shows_its_error_and_costs_nothing(client, alice, catalogue):
    finished_job(alice, catalogue["a"], status=Job.Status.FAILED, error="out of memory")
    client.force_login(alice)
    page = client.get(reverse("my_jobs")).content.decode()
    assert "out of memory" in page and "0.00" in page


def test_my_jobs_filters_by_status_and_model(client, alice, catalogue):
    finished_job(alice, catalogue["a"])
    finished_job(alice, catalogue["b"], status=Job.Status.FAILED, error="boom")
    client.force_login(alice)
    failed = client.get(reverse("my_jobs"), {"status": "failed"}).content.decode()
    assert "boom" in failed and "model-a</td>" not in failed
    by_model = client.get(reverse("my_jobs"), {"model": "model-a"}).content.decode()
    assert "model-a</td>" in by_model and "boom" not in by_model


def test_the_job_page_shows_parameters_images_timings_and_ledger(client, alice, catalogue):
    job = finished_job(alice, catalogue["a"], price="6")
    client.force_login(alice)
    page = client.get(reverse("job_detail", args=[job.pk])).content.decode()
    assert "a lighthouse at dusk" in page
    assert reverse("image_detail", args=[job.images.get().pk]) in page
    assert "Hold" in page and "Charge" in page
    assert "4.5 s" in page


def test_bob_cannot_see_alices_job_page(client, alice, bob, catalogue):
    job = finished_job(alice, catalogue["a"])
    client.force_login(bob)
    assert client.get(reverse("job_detail", args=[job.pk])).status_code == 404
    assert "lighthouse" not in client.get(reverse("my_jobs")).content.decode()


def test_credit_history_links_a_job_to_its_page_not_the_api(client, alice, catalogue):
    job = finished_job(alice, catalogue["a"])
    client.force_login(alice)
    page = client.get(reverse("credits")).content.decode()
    assert f'href="{reverse("job_detail", args=[job.pk])}"' in page
    assert reverse("api-job", args=[job.pk]) not in page


def test_the_done_panels_summary_gives_charge_duration_and_the_new_balance(
    client, alice, catalogue
):
    job = finished_job(alice, catalogue["a"], price="6")
    client.force_login(alice)
    summary = client.get(reverse("job_summary", args=[job.pk])).json()
    assert summary["charged"] == "6.00" and summary["duration"] == "4.5 s"
    assert summary["balance"] == f"{ledger.account_for(alice).balance:.2f}"
    assert summary["url"] == reverse("job_detail", args=[job.pk])


def test_bob_cannot_read_the_summary_of_alices_job(client, alice, bob, catalogue):
    job = finished_job(alice, catalogue["a"])
    client.force_login(bob)
    assert client.get(reverse("job_summary", args=[job.pk])).status_code == 404


def test_the_header_shows_alices_balance_linking_to_her_credits(client, alice):
    client.force_login(alice)
    html = client.get(reverse("home")).content.decode()
    balance = ledger.account_for(alice).balance
    assert f'id="header-balance" href="{reverse("credits")}"' in html
    assert f"{balance} credits" in html


def test_visitors_see_no_balance(client):
    assert 'id="header-balance"' not in client.get(reverse("home")).content.decode()


def test_the_generator_knows_the_balance_and_where_to_get_more_credits(client, alice, catalogue):
    client.force_login(alice)
    response = client.get(reverse("generate"))
    html = response.content.decode()
    assert page_data(response)["balance"] == str(ledger.account_for(alice).balance)
    assert 'id="price-warning"' in html
    assert f'href="{reverse("credits")}#redeem"' in html
    assert f'href="{reverse("credits")}#shop"' in html


def test_prompt_history_lists_alices_last_50_different_prompts_newest_first(
    client, alice, bob, catalogue
):
    for n in range(55):
        make_image(alice, catalogue["a"], prompt=f"prompt {n}")
    make_image(alice, catalogue["a"], prompt="prompt 54")  # a repeat shows once
    make_image(bob, catalogue["a"], prompt="bob's secret")
    client.force_login(alice)
    history = client.get(reverse("generate")).context["prompt_history"]
    assert len(history) == 50
    assert history[0] == "prompt 54" and history[-1] == "prompt 5"
    assert "bob's secret" not in history


def test_my_images_groups_a_batch_under_its_job(client, alice, catalogue):
    image = make_image(alice, catalogue["a"], batch_size=2)
    client.force_login(alice)
    html = client.get(reverse("my_images")).content.decode()
    assert f'class="batch-head" data-job-id="{image.job_id}"' in html
    assert "Batch of 2 images" in html


@pytest.mark.parametrize("page", ["generate", "my_images", "job_detail"])
def test_cards_open_the_in_page_viewer_with_the_images_actions(client, alice, catalogue, page):
    image = make_image(alice, catalogue["a"])
    client.force_login(alice)
    url = reverse(page, args=[image.job_id]) if page == "job_detail" else reverse(page)
    html = client.get(url).content.decode()
    assert 'id="image-viewer"' in html and "js/viewer.js" in html
    assert f'data-viewer-delete="{reverse("image_delete", args=[image.pk])}"' in html
    img2img = f"{reverse('generate')}?from_image={image.pk}&amp;img2img=1"
    assert f'data-viewer-img2img="{img2img}"' in html


def test_the_generator_shows_each_models_card_with_description_trigger_words_and_cost(
    client, alice, catalogue
):
    model = catalogue["b"]
    model.description = "Soft watercolours."
    model.trigger_words = "wcstyle"
    model.preview.save("p.png", ContentFile(png_bytes()), save=True)
    client.force_login(alice)
    html = client.get(reverse("generate")).content.decode()
    card = html[html.index('data-name="model-b"') :]
    card = card[: card.index("</div>\n</div>")]
    assert "Soft watercolours." in card and "wcstyle" in card and "×2 cost" in card
    preview = reverse("catalogue-preview", args=[model.pk])
    assert preview in card
    assert client.get(preview).status_code == 200


def test_a_preview_of_a_disabled_model_is_not_served(client, alice, catalogue):
    model = catalogue["disabled"]
    model.preview.save("p.png", ContentFile(png_bytes()), save=True)
    client.force_login(alice)
    assert client.get(reverse("catalogue-preview", args=[model.pk])).status_code == 404


@pytest.mark.parametrize("page", ["my_jobs", "job_detail"])
def test_the_job_pages_render_in_simplified_chinese(client, alice, catalogue, page):
    job = finished_job(alice, catalogue["a"])
    client.force_login(alice)
    url = reverse(page, args=[job.pk]) if page == "job_detail" else reverse(page)
    html = client.get(url, headers={"Accept-Language": "zh-hans"}).content.decode()
    assert '<html lang="zh-hans">' in html
    assert "排队等待" in html and "耗时" in html  # Queue wait, Duration
