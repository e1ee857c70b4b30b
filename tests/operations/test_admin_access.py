"""Only staff reach the admin pages and actions this platform adds: anonymous visitors and
members are sent to the admin log-in, and nothing they post changes anything."""

from __future__ import annotations

import pytest
from django.urls import reverse

from accounts.models import ApiToken, CreditEntry
from generation.models import CatalogEntry, Job

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(alice, bob):
    entry = CatalogEntry.objects.create(name="model-a", kind="checkpoint", available=True)
    job = Job.objects.create(owner=bob, checkpoint=entry, params={})
    token, _secret = ApiToken.issue(bob, "script")
    return {"entry": entry, "job": job, "token": token, "bob": bob}


def pages(world) -> list[tuple[str, str]]:
    """(method, url) of every page and action added for staff."""
    bob, entry = world["bob"], world["entry"]
    return [
        ("get", reverse("admin:accounts_user_changelist")),
        ("get", reverse("admin:accounts_user_change", args=[bob.pk])),
        ("get", reverse("admin:accounts_user_member_action", args=[bob.pk, "credits"])),
        ("post", reverse("admin:accounts_user_member_action", args=[bob.pk, "credits"])),
        ("post", reverse("admin:accounts_user_member_action", args=[bob.pk, "tier"])),
        ("post", reverse("admin:accounts_user_member_action", args=[bob.pk, "suspend"])),
        ("post", reverse("admin:accounts_user_revoke_token", args=[bob.pk, world["token"].pk])),
        ("get", reverse("admin:generation_catalogentry_changelist")),
        ("post", reverse("admin:generation_catalogentry_scan")),
        ("get", reverse("admin:generation_catalogentry_preview", args=[entry.pk])),
        ("get", reverse("admin:generation_job_changelist")),
        ("get", reverse("admin:generation_job_change", args=[world["job"].pk])),
        ("get", reverse("ops")),
        ("get", reverse("ops_workers")),
    ]


FORM = {"amount": "500", "reason": "me", "apply": "1", "tier": "1"}


def assert_nothing_changed(world) -> None:
    bob = world["bob"]
    bob.refresh_from_db()
    assert bob.is_active
    assert not CreditEntry.objects.filter(kind="adjustment").exists()
    world["token"].refresh_from_db()
    assert world["token"].revoked_at is None
    assert CatalogEntry.objects.get(pk=world["entry"].pk).available


@pytest.mark.parametrize("who", ["anonymous", "alice"])
def test_anonymous_visitors_and_members_are_sent_to_the_admin_log_in(client, world, alice, who):
    if who == "alice":
        client.force_login(alice)
    for method, url in pages(world):
        response = getattr(client, method)(url, FORM if method == "post" else None)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/admin/login/"), url
    assert_nothing_changed(world)


def test_members_changelist_actions_posted_by_a_member_do_nothing(client, world, alice):
    client.force_login(alice)
    response = client.post(
        reverse("admin:accounts_user_changelist"),
        {"action": "suspend", "_selected_action": [str(world["bob"].pk)], **FORM},
    )
    assert response.status_code == 302
    assert_nothing_changed(world)


def test_staff_without_permissions_get_403_on_the_member_and_catalogue_actions(
    client, world, carol
):
    client.force_login(carol)  # staff, but no model permissions
    bob = world["bob"]
    for url in (
        reverse("admin:accounts_user_member_action", args=[bob.pk, "suspend"]),
        reverse("admin:accounts_user_revoke_token", args=[bob.pk, world["token"].pk]),
        reverse("admin:generation_catalogentry_scan"),
    ):
        assert client.post(url, FORM).status_code == 403, url
    assert_nothing_changed(world)
