"""Suspending a member from the members admin, end to end: no log-in, no submitting (page or
REST), no publishing; their queue empties and every hold is settled once (check_ledger)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from accounts.models import ApiToken, CreditEntry
from gallery.models import Publication
from generation.models import CatalogEntry, Job
from generation.submission import submit_job
from gpu_worker.protocol import CANCEL_KEY
from tests.accounts.conftest import balance_of, give
from tests.conftest import PASSWORD
from tests.gallery.factories import make_image
from tests.generation.conftest import send_event, wait_for

# Priced at 1 credit (512x512, 20 steps), so half the steps cost a round 0.50.
JOB = {"prompt": "a lighthouse", "checkpoint": "model-a", "width": 512, "height": 512, "steps": 20}


@pytest.fixture
def model_a(transactional_db) -> CatalogEntry:
    return CatalogEntry.objects.create(name="model-a", kind="checkpoint", family="sd1")


def suspend_from_the_admin(carol, member, reason: str) -> str:
    carol.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_user", "change_user"])
    )
    staff = Client()
    staff.force_login(carol)
    url = reverse("admin:accounts_user_member_action", args=[member.pk, "suspend"])
    response = staff.post(url, {"reason": reason, "apply": "1"}, follow=True)
    return response.content.decode()


def logs_in(username: str) -> bool:
    browser = Client()
    browser.post(reverse("login"), {"username": username, "password": PASSWORD})
    return "_auth_user_id" in browser.session


def test_a_suspended_member_is_locked_out_and_her_jobs_end_with_the_ledger_clean(
    alice, carol, model_a, broker, platform_worker, redis_client
):
    give(alice, 100)
    _token, secret = ApiToken.issue(alice, "script")
    browser = Client()
    browser.force_login(alice)
    image = make_image(alice, checkpoint=model_a)
    waiting = submit_job(alice, JOB)
    running = submit_job(alice, JOB)
    assert running.mark_running("gpu-1", running.attempt)
    before = balance_of(alice)
    assert logs_in("alice")

    page = suspend_from_the_admin(carol, alice, "chargeback fraud")
    assert "alice is suspended; 2 unfinished jobs cancelled." in page

    # The queued job ended at once and its whole hold came back.
    waiting.refresh_from_db()
    assert waiting.status == Job.Status.CANCELLED
    assert CreditEntry.objects.filter(job_id=waiting.pk, kind="release").exists()
    # The running one was asked to stop; the worker answers and it pays for the steps it ran.
    running.refresh_from_db()
    assert running.cancel_requested_at is not None
    assert redis_client.exists(CANCEL_KEY.format(job_id=running.pk))
    send_event(
        broker,
        {
            "job_id": str(running.pk),
            "attempt": running.attempt,
            "worker_id": "gpu-1",
            "kind": "cancelled",
            "steps_done": running.total_steps // 2,
        },
    )
    wait_for(lambda: Job.objects.get(pk=running.pk).status == Job.Status.CANCELLED)
    charged = CreditEntry.objects.get(job_id=running.pk, kind__in=["capture", "release"]).charged
    assert (running.price, charged) == (Decimal("1.00"), Decimal("0.50"))
    assert balance_of(alice) == before + waiting.price + running.price - charged
    call_command("check_ledger")  # raises on any violation

    # Locked out everywhere.
    assert not logs_in("alice")
    form = browser.post(reverse("generate"), {**JOB, "sampler": "Euler a"})
    assert form.status_code == 302 and reverse("login") in form["Location"]
    api = APIClient()
    rest = api.post(reverse("api-jobs"), JOB, format="json", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert rest.status_code in (401, 403)
    publish = browser.post(reverse("gallery:publish", args=[image.pk]), {"visibility": "public"})
    assert publish.status_code == 302 and reverse("login") in publish["Location"]
    assert Job.objects.filter(owner=alice).count() == 3  # the image's job and the two above
    assert not Publication.objects.filter(owner=alice).exists()


def test_a_reinstated_member_can_log_in_again(alice, bob, carol):
    suspend_from_the_admin(carol, alice, "mistaken identity")
    assert not logs_in("alice")
    staff = Client()
    staff.force_login(carol)
    url = reverse("admin:accounts_user_member_action", args=[alice.pk, "reinstate"])
    staff.post(url, {"reason": "it was bob", "apply": "1"})
    assert logs_in("alice")
    assert logs_in("bob")  # never touched


def test_suspending_without_a_reason_changes_nothing(alice, carol):
    carol.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_user", "change_user"])
    )
    staff = Client()
    staff.force_login(carol)
    url = reverse("admin:accounts_user_member_action", args=[alice.pk, "suspend"])
    response = staff.post(url, {"reason": "", "apply": "1"})
    assert response.status_code == 400
    alice.refresh_from_db()
    assert alice.is_active


def test_staff_need_a_superuser_to_suspend_staff(alice, carol):
    from tests.conftest import make_user

    dave = make_user("dave", is_staff=True)
    page = suspend_from_the_admin(carol, dave, "disagreement")
    assert "Only a superuser can suspend or reinstate staff." in page
    dave.refresh_from_db()
    assert dave.is_active
