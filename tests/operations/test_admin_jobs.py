from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from accounts.ledger import account_for
from generation.models import Job
from generation.submission import submit_job

pytestmark = pytest.mark.django_db


@pytest.fixture
def demo_checkpoint(db):
    from generation.models import CatalogEntry

    return CatalogEntry.objects.create(name="model-a", kind="checkpoint", available=True)


def test_staff_cancel_alices_queued_job_from_the_admin_and_her_hold_is_released(
    client, alice, carol, demo_checkpoint, redis_client
):
    balance_before = account_for(alice).balance
    job = submit_job(alice, {"prompt": "a cat", "checkpoint": "model-a"})
    assert account_for(alice).balance < balance_before
    carol.user_permissions.add(*Permission.objects.filter(codename__in=["view_job", "change_job"]))
    client.force_login(carol)
    response = client.post(
        reverse("admin:generation_job_changelist"),
        {"action": "cancel_jobs", "_selected_action": [str(job.pk)]},
    )
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED
    assert account_for(alice).balance == balance_before


def test_a_member_cannot_reach_the_jobs_admin(client, alice):
    client.force_login(alice)
    response = client.get(reverse("admin:generation_job_changelist"))
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]
