"""The REST API under /api/v1/: submit, list, get, cancel, quote, catalogue, me, images, and
what bob must never reach of alice's."""

from __future__ import annotations

import base64
import io
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from PIL import Image

from generation.models import Job, JobImage
from generation.submission import submit_job
from generation.worker_events import handle_job_event
from tests.generation.conftest import SMALL, api_client

pytestmark = pytest.mark.django_db


def finished_job(user) -> Job:
    job = submit_job(user, SMALL)
    job.mark_assigned("gpu-1")
    out = io.BytesIO()
    Image.new("RGB", (64, 64), "green").save(out, "PNG")
    handle_job_event(
        {
            "job_id": str(job.pk),
            "attempt": job.attempt,
            "worker_id": "w",
            "kind": "succeeded",
            "images": [
                {
                    "png_b64": base64.b64encode(out.getvalue()).decode(),
                    "seed": 3,
                    "infotext": "x",
                    "width": 64,
                    "height": 64,
                }
            ],
        }
    )
    return job


def test_alice_submits_a_job_and_gets_it_back_with_its_place_in_the_queue(
    alice_api, catalogue, redis_client
):
    response = alice_api.post("/api/v1/jobs/", SMALL, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "queued" and body["checkpoint"] == "model-a"
    assert body["position"] == 1 and body["eta"] > 0
    assert body["price"] == "0.01" and body["images"] == []
    assert set(body) >= {
        "id",
        "mode",
        "params",
        "created_at",
        "started_at",
        "finished_at",
        "error",
        "steps_done",
    }
    assert alice_api.get(f"/api/v1/jobs/{body['id']}/").json()["id"] == body["id"]


def test_an_invalid_job_answers_json_naming_the_field(alice_api, catalogue):
    response = alice_api.post("/api/v1/jobs/", {**SMALL, "steps": 999}, format="json")
    assert response.status_code == 422
    assert response.json()["field"] == "steps" and "between 1 and" in response.json()["detail"]
    assert (
        alice_api.post("/api/v1/jobs/", {**SMALL, "checkpoint": "../x"}, format="json").json()[
            "detail"
        ]
        == "unknown model '../x'"
    )


def test_a_retried_post_with_the_same_idempotency_key_returns_the_first_job(alice_api, catalogue):
    first = alice_api.post("/api/v1/jobs/", SMALL, format="json", HTTP_IDEMPOTENCY_KEY="abc")
    again = alice_api.post("/api/v1/jobs/", SMALL, format="json", HTTP_IDEMPOTENCY_KEY="abc")
    assert first.json()["id"] == again.json()["id"]
    assert Job.objects.count() == 1


def test_too_many_unfinished_jobs_is_429(alice, alice_api, catalogue):
    from generation.limits import limits_for

    for _ in range(limits_for(alice).max_unfinished_jobs):
        assert alice_api.post("/api/v1/jobs/", SMALL, format="json").status_code == 201
    response = alice_api.post("/api/v1/jobs/", SMALL, format="json")
    assert response.status_code == 429 and response.json()["field"] == "jobs"
    assert response["Retry-After"]


def test_an_img2img_job_can_be_uploaded_as_a_form(alice_api, catalogue):
    out = io.BytesIO()
    Image.new("RGB", (64, 64)).save(out, "PNG")
    out.name = "cat.png"
    out.seek(0)
    response = alice_api.post("/api/v1/jobs/", {**SMALL, "init_image": out}, format="multipart")
    assert response.status_code == 201, response.content
    assert response.json()["mode"] == "img2img"


def test_the_quote_prices_without_submitting(alice_api, catalogue):
    response = alice_api.post(
        "/api/v1/jobs/quote/",
        {"checkpoint": "model-b", "width": 512, "height": 512, "steps": 20},
        format="json",
    )
    assert response.status_code == 200
    assert response.json()["price"] == "2.00" and response.json()["eta_source"] == "default"
    assert not Job.objects.exists()


def test_my_jobs_are_listed_newest_first_and_paginated(alice, alice_api, bob, catalogue):
    ids = [str(submit_job(alice, SMALL).pk) for _ in range(2)]
    submit_job(bob, SMALL)
    body = alice_api.get("/api/v1/jobs/").json()
    assert body["count"] == 2
    assert [j["id"] for j in body["results"]] == ids[::-1]


def test_bob_cannot_read_or_cancel_alices_job(alice, bob_api, catalogue):
    job = submit_job(alice, SMALL)
    assert bob_api.get(f"/api/v1/jobs/{job.pk}/").status_code == 404
    assert bob_api.post(f"/api/v1/jobs/{job.pk}/cancel/").status_code == 404
    assert Job.objects.get(pk=job.pk).status == "queued"


def test_carol_as_staff_can_cancel_alices_job(alice, carol, catalogue):
    job = submit_job(alice, SMALL)
    response = api_client(carol).post(f"/api/v1/jobs/{job.pk}/cancel/")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"


def test_alice_cancels_her_queued_job_at_once(alice_api, alice, catalogue, redis_client):
    job = submit_job(alice, SMALL)
    response = alice_api.post(f"/api/v1/jobs/{job.pk}/cancel/")
    assert response.json()["status"] == "cancelled"
    assert alice_api.post(f"/api/v1/jobs/{job.pk}/cancel/").status_code == 409


def test_cancelling_a_running_job_raises_the_workers_interrupt_flag(
    alice_api, alice, catalogue, redis_client
):
    job = submit_job(alice, SMALL)
    job.mark_assigned("gpu-1")
    job.mark_running("gpu-1", job.attempt)
    response = alice_api.post(f"/api/v1/jobs/{job.pk}/cancel/")
    assert response.status_code == 200
    assert response.json()["status"] == "running" and response.json()["cancel_requested"]
    assert redis_client.get(f"atelier:cancel:{job.pk}") == b"interrupt"


def test_the_catalogue_lists_what_alice_may_use(alice_api, catalogue):
    names = [m["name"] for m in alice_api.get("/api/v1/models/").json()]
    assert "model-a" in names and "model-off" not in names
    assert {"is_demo", "title", "short_hash"} <= set(alice_api.get("/api/v1/models/").json()[0])
    assert [m["name"] for m in alice_api.get("/api/v1/loras/").json()] == ["style"]
    assert [m["name"] for m in alice_api.get("/api/v1/vaes/").json()] == ["clear-vae"]
    samplers = alice_api.get("/api/v1/samplers/").json()
    assert "Euler a" in [s["name"] for s in samplers["samplers"]]
    assert "Karras" in [s["label"] for s in samplers["schedulers"]]


def test_the_default_model_is_alices_own_choice(alice_api, bob_api, catalogue):
    assert (
        alice_api.post(
            "/api/v1/settings/default-model/", {"checkpoint": "model-b"}, format="json"
        ).status_code
        == 200
    )
    assert alice_api.get("/api/v1/me/").json()["default_checkpoint"] == "model-b"
    assert bob_api.get("/api/v1/me/").json()["default_checkpoint"] == "model-a"
    assert (
        alice_api.post(
            "/api/v1/settings/default-model/", {"checkpoint": "../etc"}, format="json"
        ).status_code
        == 422
    )


def test_me_tells_alice_her_limits_and_unfinished_jobs(alice_api, catalogue):
    body = alice_api.get("/api/v1/me/").json()
    assert body["username"] == "alice" and body["limits"]["max_steps"] > 0
    assert body["unfinished_jobs"] == 0


@pytest.mark.parametrize("path", ["/api/v1/me", "/api/v1/models", "/api/v1/jobs"])
def test_api_paths_without_the_trailing_slash_answer_json_not_an_empty_redirect(
    alice_api, catalogue, path
):
    response = alice_api.get(path)
    assert response.status_code == 200
    assert response.json() == alice_api.get(path + "/").json()


def test_a_post_without_the_trailing_slash_is_served_too(alice_api, catalogue):
    response = alice_api.post("/api/v1/jobs/quote", SMALL, format="json")
    assert response.status_code == 200 and response.json()["price"]


def test_an_unknown_api_path_without_a_slash_is_404(alice_api):
    assert alice_api.get("/api/v1/nothing-here").status_code == 404


def test_me_shows_alices_own_balance_and_tier_which_a_submission_reduces(
    alice, alice_api, catalogue
):
    from accounts.ledger import account_for

    before = alice_api.get("/api/v1/me/").json()
    assert Decimal(before["balance"]) == account_for(alice).balance
    assert before["tier"] == "Free"
    price = Decimal(
        alice_api.post("/api/v1/jobs/", {"prompt": "a cat"}, format="json").json()["price"]
    )
    after = alice_api.get("/api/v1/me/").json()
    assert Decimal(after["balance"]) == Decimal(before["balance"]) - price


def test_alice_lists_filters_and_deletes_her_images(alice, alice_api, catalogue):
    job = finished_job(alice)
    images = alice_api.get("/api/v1/images/").json()["results"]
    assert len(images) == 1 and images[0]["checkpoint"] == "model-a"
    assert alice_api.get("/api/v1/images/?model=model-b").json()["count"] == 0
    assert alice_api.get(f"/api/v1/jobs/{job.pk}/").json()["images"][0]["seed"] == 3
    assert alice_api.delete(f"/api/v1/images/{images[0]['id']}/").status_code == 204
    assert not JobImage.objects.exists()


def test_bob_cannot_see_delete_or_download_alices_image(alice, bob, bob_api, catalogue):
    finished_job(alice)
    image = JobImage.objects.get()
    assert bob_api.get("/api/v1/images/").json()["count"] == 0
    assert bob_api.delete(f"/api/v1/images/{image.pk}/").status_code == 404
    browser = Client()
    browser.force_login(bob)
    assert browser.get(f"/images/{image.pk}/file").status_code == 404
    assert browser.get(f"/images/{image.pk}/thumb").status_code == 404


def test_alice_downloads_her_png_and_thumbnail(alice, catalogue):
    finished_job(alice)
    image = JobImage.objects.get()
    browser = Client()
    browser.force_login(alice)
    response = browser.get(f"/images/{image.pk}/file?download=1")
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    assert response.getvalue().startswith(b"\x89PNG")
    assert "attachment" in response["Content-Disposition"]
    assert browser.get(f"/images/{image.pk}/thumb")["Content-Type"] == "image/webp"


def test_an_anonymous_caller_gets_nothing(catalogue):
    client = Client()
    assert client.get("/api/v1/jobs/").status_code in (401, 403)
    assert client.post("/api/v1/jobs/", SMALL).status_code in (401, 403)


def test_a_bearer_token_works_for_scripts(alice, catalogue):
    from accounts.models import ApiToken

    _token, secret = ApiToken.issue(alice, "script")
    client = Client()
    response = client.post(
        "/api/v1/jobs/",
        SMALL,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}",
    )
    assert response.status_code == 201


def test_the_openapi_schema_describes_the_jobs_api(alice_api):
    response = alice_api.get("/api/schema/?format=json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert {"/api/v1/jobs/", "/api/v1/jobs/{id}/cancel/", "/api/v1/models/"} <= set(paths)


def test_a_submission_runs_a_bounded_number_of_queries(
    alice, catalogue, redis_client, django_assert_max_num_queries
):
    """The tier is read once per request, with the token, the form defaults written in one
    UPDATE, the new job's (empty) images and speed history not read in bulk: 19 queries
    before, 15 then, 11, 10 now that an API submission leaves the form's defaults alone (token
    with account and tier, catalogue, the write transaction, place)."""
    from accounts.models import ApiToken
    from generation.queue import queue_snapshot, store_snapshot

    _token, secret = ApiToken.issue(alice, "script")
    client = Client()
    headers = {"Authorization": f"Bearer {secret}"}
    # The first call also stamps the token's last use and opens the form-defaults row.
    first = client.post(
        "/api/v1/jobs/", SMALL, content_type="application/json", headers=headers
    ).json()
    store_snapshot(queue_snapshot())  # what the dispatcher keeps fresh
    with django_assert_max_num_queries(10):
        response = client.post(
            "/api/v1/jobs/", SMALL, content_type="application/json", headers=headers
        )
    assert response.status_code == 201
    body = response.json()
    assert body["images"] == [] and body["position"] == 2 and body["eta"] > 0
    assert body["id"] != first["id"]


def test_a_scripted_submission_leaves_the_generator_form_as_alice_left_it(
    alice, catalogue, redis_client
):
    """The page remembers what alice last generated there; her API script's jobs (as A1111's
    API leaves its UI alone) do not overwrite it, nor does an A1111-style call."""
    from accounts.models import ApiToken
    from generation.models import UserGenerationSettings

    page = Client()  # the generator page posts to the REST endpoint from her session
    page.force_login(alice)
    posted = page.post(
        "/api/v1/jobs/", {**SMALL, "prompt": "from the page"}, content_type="application/json"
    )
    assert posted.status_code == 201, posted.content
    assert UserGenerationSettings.objects.get(user=alice).last_params["prompt"] == "from the page"
    _token, secret = ApiToken.issue(alice, "script")
    response = Client().post(
        "/api/v1/jobs/",
        {**SMALL, "prompt": "from a script"},
        content_type="application/json",
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert response.status_code == 201
    assert UserGenerationSettings.objects.get(user=alice).last_params["prompt"] == "from the page"
    me = Client().get("/api/v1/me/", headers={"Authorization": f"Bearer {secret}"}).json()
    assert me["last_params"]["prompt"] == "from the page"


def test_a_token_caller_is_held_to_their_tier_and_to_the_default_once_it_ran_out(
    alice, catalogue, redis_client
):
    """The tier comes with the token's row (no second read): still the member's own tier,
    and the default tier's bounds once a time-limited tier has ended."""
    from datetime import timedelta

    from django.utils import timezone

    from accounts.models import ApiToken, MembershipTier
    from accounts.tiers import set_tier

    roomy = MembershipTier.objects.create(name="Roomy", slug="roomy", rank=50, max_steps=99)
    _token, secret = ApiToken.issue(alice, "script")
    headers = {"Authorization": f"Bearer {secret}"}
    long_job = {**SMALL, "steps": 99}

    def submit() -> Any:
        return Client().post(
            "/api/v1/jobs/", long_job, content_type="application/json", headers=headers
        )

    set_tier(alice, roomy, until=timezone.now() + timedelta(days=1))
    assert submit().status_code == 201
    set_tier(alice, roomy, until=timezone.now() - timedelta(minutes=1))
    refused = submit()
    assert refused.status_code == 422
    assert refused.json()["detail"] == "steps must be between 1 and 50"


def test_a_tier_changed_within_a_request_is_read_anew(alice, catalogue):
    """The per-request tier memo never hides a change made in the same request."""
    from accounts.models import MembershipTier
    from accounts.request_memo import memo_scope
    from accounts.tiers import set_tier, tier_of

    roomy = MembershipTier.objects.create(name="Roomy", slug="roomy", rank=50, max_steps=99)
    with memo_scope():
        before = tier_of(alice)
        assert tier_of(alice) is before  # read once
        set_tier(alice, roomy)
        assert tier_of(alice).pk == roomy.pk
