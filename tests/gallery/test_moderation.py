"""Reports, the moderation queue, hiding and restoring, suspending an author."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.admin.models import LogEntry
from django.urls import reverse

from accounts.models import ApiToken
from accounts.suspension import SuspensionError, reinstate_user
from gallery import moderation
from gallery.errors import Conflict, NotAllowed, NotFound
from gallery.models import Publication, Report, Visibility
from generation.models import Job
from generation.suspension import suspend_user
from tests.gallery.factories import make_checkpoint, make_publication


def _report(client, publication, reason="spam", details=""):
    return client.post(
        reverse("gallery:report", args=[publication.pk]),
        {"reason": reason, "details": details},
        follow=True,
    )


def test_bob_reports_alices_image_with_a_reason(bob, alices_public, client_for):
    response = _report(client_for(bob), alices_public, "stolen", "my fox")
    assert "A moderator will look at this image" in response.content.decode()
    report = Report.objects.get()
    assert (report.reporter, report.reason, report.details) == (bob, "stolen", "my fox")


def test_bob_reporting_the_same_image_twice_gets_a_clear_error(bob, alices_public, client_for):
    client = client_for(bob)
    _report(client, alices_public)
    response = _report(client, alices_public)
    assert "You have already reported this image" in response.content.decode()
    assert Report.objects.count() == 1
    with pytest.raises(Conflict):
        moderation.report_publication(bob, alices_public.pk, "spam")


def test_alice_cannot_report_her_own_image(alice, alices_public):
    with pytest.raises(NotAllowed):
        moderation.report_publication(alice, alices_public.pk, "spam")


def test_bob_cannot_report_an_image_he_cannot_see(alice, bob):
    private = make_publication(alice, Visibility.PRIVATE)
    with pytest.raises(NotFound):
        moderation.report_publication(bob, private.pk, "spam")


def test_a_report_needs_a_known_reason(bob, alices_public, client_for):
    response = _report(client_for(bob), alices_public, reason="because")
    assert "Choose a reason for the report." in response.content.decode()
    assert not Report.objects.exists()


@pytest.mark.parametrize("viewer, status", [("anonymous", 302), ("bob", 403), ("carol", 200)])
def test_only_staff_open_the_moderation_queue(viewer, status, bob, carol, client_for):
    user = {"anonymous": None, "bob": bob, "carol": carol}[viewer]
    response = client_for(user).get(reverse("gallery:moderation"))
    assert response.status_code == status
    if status == 302:
        assert "/login/" in response["Location"]


def test_the_queue_lists_reported_images_with_their_reports(bob, carol, alices_public, client_for):
    moderation.report_publication(bob, alices_public.pk, "harassment", "rude title")
    page = client_for(carol).get(reverse("gallery:moderation")).content.decode()
    assert str(alices_public.pk) in page and "rude title" in page


def test_bob_cannot_moderate(bob, alices_public, client_for):
    response = client_for(bob).post(
        reverse("gallery:moderate", args=[alices_public.pk]), {"action": "hide"}
    )
    assert response.status_code == 403
    assert not Publication.objects.get(pk=alices_public.pk).hidden
    with pytest.raises(NotAllowed):
        moderation.hide_publication(bob, alices_public, "no")


def test_a_hidden_image_vanishes_for_everyone_but_its_author_and_staff(
    alice, bob, carol, alices_public, client_for
):
    client_for(carol).post(
        reverse("gallery:moderate", args=[alices_public.pk]),
        {"action": "hide", "reason": "off-topic"},
    )
    page = reverse("gallery:image", args=[alices_public.pk])
    assert client_for(bob).get(page).status_code == 404
    assert client_for(None).get(page).status_code == 404
    bobs_feed = client_for(bob).get(reverse("gallery:feed")).content.decode()
    assert str(alices_public.pk) not in bobs_feed
    authors_view = client_for(alice).get(page)
    assert authors_view.status_code == 200
    assert "Hidden by a moderator" in authors_view.content.decode()
    assert client_for(carol).get(page).status_code == 200
    entry = LogEntry.objects.get(object_id=str(alices_public.pk))
    assert (entry.user, entry.change_message) == (carol, "Hidden: off-topic")


def test_restoring_brings_the_image_back(bob, carol, client_for):
    publication = make_publication(
        carol.__class__.objects.create_user("dave", "d@example.com"), hidden=True
    )
    moderation.restore_publication(carol, publication, "appeal accepted")
    assert client_for(bob).get(reverse("gallery:image", args=[publication.pk])).status_code == 200


def test_resolving_closes_every_open_report(bob, carol, alices_public, client_for):
    moderation.report_publication(bob, alices_public.pk, "spam")
    client_for(carol).post(
        reverse("gallery:moderate", args=[alices_public.pk]), {"action": "dismiss"}
    )
    report = Report.objects.get()
    assert (report.resolution, report.resolved_by) == (Report.Resolution.DISMISSED, carol)
    assert report.resolved_at is not None
    assert not moderation.moderation_queue().exists()


def test_a_moderator_marks_an_image_mature(carol, alices_public, client_for):
    client_for(carol).post(
        reverse("gallery:moderate", args=[alices_public.pk]), {"action": "mature"}
    )
    publication = Publication.objects.get(pk=alices_public.pk)
    assert publication.mature and publication.mature_locked


# --- suspension --------------------------------------------------------------------------


def test_carol_suspends_alice_who_then_cannot_log_in_or_use_tokens(alice, carol, client_for):
    _token, secret = ApiToken.issue(alice, "script")
    alices_browser = client_for(alice)
    response = client_for(carol).post(
        reverse("gallery:suspend", args=[alice.pk]), {"reason": "spam wave"}
    )
    assert response.status_code == 302
    alice.refresh_from_db()
    assert not alice.is_active
    assert ApiToken.authenticate(secret) is None
    # Her open session is dropped: Django's ModelBackend refuses inactive users.
    assert alices_browser.get(reverse("gallery:preferences")).status_code == 302
    entry = LogEntry.objects.get(object_id=str(alice.pk))
    assert (entry.user, entry.change_message) == (carol, "Suspended: spam wave")


def test_suspending_cancels_the_authors_queued_jobs_and_releases_their_holds(
    alice, carol, redis_client
):
    from accounts import ledger
    from accounts.models import CreditEntry

    ledger.credit(alice, Decimal("50"), CreditEntry.Kind.GRANT, reason="test")
    job = Job.objects.create(
        owner=alice, params={}, checkpoint=make_checkpoint(), price=Decimal("5")
    )
    ledger.hold(alice, job.price, job.pk)
    cancelled = suspend_user(carol, alice, "chargeback")
    job.refresh_from_db()
    assert (cancelled, job.status) == (1, Job.Status.CANCELLED)
    assert CreditEntry.objects.filter(job_id=job.pk, kind=CreditEntry.Kind.RELEASE).exists()


def test_reinstating_lets_the_member_back_in(alice, carol):
    suspend_user(carol, alice, "mistake?")
    reinstate_user(carol, alice, "it was a mistake")
    alice.refresh_from_db()
    assert alice.is_active


def test_bob_cannot_suspend_anyone_and_carol_cannot_suspend_herself(alice, bob, carol, client_for):
    assert (
        client_for(bob)
        .post(reverse("gallery:suspend", args=[alice.pk]), {"reason": "x"})
        .status_code
        == 403
    )
    with pytest.raises(SuspensionError):
        suspend_user(bob, alice, "x")
    with pytest.raises(SuspensionError):
        suspend_user(carol, carol, "x")
    with pytest.raises(SuspensionError):
        suspend_user(carol, alice, "   ")
    alice.refresh_from_db()
    assert alice.is_active


def test_the_moderation_form_never_redirects_off_site(carol, alices_public, client_for):
    response = client_for(carol).post(
        reverse("gallery:moderate", args=[alices_public.pk]),
        {"action": "mature", "next": "https://evil.example/"},
    )
    assert response["Location"] == reverse("gallery:moderation")
