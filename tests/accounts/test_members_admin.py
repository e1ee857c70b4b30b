"""The members admin: list filters, a member's page, and the staff actions with a reason."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from accounts.ledger import account_for
from accounts.models import ApiToken, CreditAccount, CreditEntry, MembershipTier, User
from tests.accounts.conftest import balance_of, give, set_balance
from tests.gallery.factories import make_publication

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:accounts_user_changelist"


@pytest.fixture
def admin_client(client, carol):
    """carol, staff with the members admin's view and change permissions."""
    carol.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_user", "change_user"])
    )
    client.force_login(carol)
    return client


def act_on_list(client, action: str, users, **form):
    """The list's action, then its form (Django's intermediate page) with `apply`."""
    selected = [str(u.pk) for u in users]
    page = client.post(reverse(CHANGELIST), {"action": action, "_selected_action": selected})
    assert page.status_code == 200, "the action shows its form first"
    return client.post(
        reverse(CHANGELIST),
        {"action": action, "_selected_action": selected, "apply": "1", **form},
        follow=True,
    )


def log_lines(user) -> list[tuple[str, str]]:
    entries = LogEntry.objects.filter(object_id=str(user.pk)).order_by("action_time")
    return [(e.user.username, e.change_message) for e in entries]


def test_carol_grants_alice_credits_from_the_list_which_writes_a_ledger_entry_and_the_log(
    admin_client, alice, carol
):
    set_balance(alice, 5)
    response = act_on_list(
        admin_client, "grant_or_deduct_credits", [alice], amount="25", reason="goodwill"
    )
    assert "alice: +25.00 credits, balance now 30.00." in response.content.decode()
    assert balance_of(alice) == Decimal("30.00")
    entry = CreditEntry.objects.of_user(alice).filter(kind="adjustment", actor=carol).get()
    assert (entry.amount, entry.reason) == (Decimal("25.00"), "goodwill")
    assert ("carol", "Credits +25.00: goodwill") in log_lines(alice)


def test_carol_deducts_credits_from_alices_page(admin_client, alice):
    set_balance(alice, 10)
    url = reverse("admin:accounts_user_member_action", args=[alice.pk, "credits"])
    assert admin_client.get(url).status_code == 200
    response = admin_client.post(url, {"amount": "-4", "reason": "duplicate grant", "apply": "1"})
    assert response.status_code == 302
    assert balance_of(alice) == Decimal("6.00")
    assert ("carol", "Credits -4.00: duplicate grant") in log_lines(alice)


def test_deducting_more_than_alice_has_is_refused_and_nothing_is_written(admin_client, alice):
    set_balance(alice, 3)
    response = act_on_list(
        admin_client, "grant_or_deduct_credits", [alice], amount="-10", reason="abuse"
    )
    assert "alice: the balance is 3.00, so 10.00 cannot be deducted." in response.content.decode()
    assert balance_of(alice) == Decimal("3.00")
    assert not CreditEntry.objects.of_user(alice).filter(reason="abuse").exists()
    assert not [line for line in log_lines(alice) if "abuse" in line[1]]


@pytest.mark.parametrize(
    ("form", "field_error"),
    [
        ({"amount": "5", "reason": ""}, ("reason", "This field is required.")),
        ({"amount": "0", "reason": "why"}, ("amount", "An adjustment must change the balance.")),
        ({"amount": "1.234", "reason": "cents"}, ("amount", "no more than 2 decimal places")),
    ],
)
def test_a_bad_credit_form_is_answered_400_naming_the_problem(
    admin_client, alice, form, field_error
):
    url = reverse("admin:accounts_user_member_action", args=[alice.pk, "credits"])
    response = admin_client.post(url, {**form, "apply": "1"})
    assert response.status_code == 400
    field, message = field_error
    errors = response.context["form"].errors
    assert list(errors) == [field] and message in errors[field][0]
    assert not CreditEntry.objects.of_user(alice).filter(kind="adjustment").exists()


def test_carol_moves_alice_and_bob_to_another_tier_and_each_change_is_logged(
    admin_client, alice, bob
):
    pro = MembershipTier.objects.create(name="Studio", slug="studio", rank=9)
    act_on_list(admin_client, "change_tier", [alice, bob], tier=str(pro.pk), reason="partners")
    for member in (alice, bob):
        assert CreditAccount.objects.get(pk=member.pk).tier == pro
        assert any(
            who == "carol" and line.endswith("-> Studio: partners")
            for who, line in log_lines(member)
        )


def test_admin_messages_keep_the_members_username_as_written(admin_client, alice):
    pro = MembershipTier.objects.create(name="Studio", slug="studio", rank=9)
    response = act_on_list(admin_client, "change_tier", [alice], tier=str(pro.pk), reason="x")
    page = response.content.decode()
    assert "alice is now on Studio." in page
    assert "Alice is now on" not in page


def test_the_admin_links_to_the_operations_pages(admin_client):
    page = admin_client.get(reverse("admin:index")).content.decode()
    assert f'href="{reverse("ops")}"' in page


def test_a_tier_end_in_the_past_is_refused(admin_client, alice):
    pro = MembershipTier.objects.create(name="Studio", slug="studio", rank=9)
    response = act_on_list(
        admin_client,
        "change_tier",
        [alice],
        tier=str(pro.pk),
        until="2001-01-01 00:00",
        reason="trial",
    )
    assert "The end of the tier must be in the future." in response.content.decode()
    assert account_for(alice).tier != pro


def test_alices_page_shows_her_balance_tier_jobs_images_and_tokens(admin_client, alice):
    give(alice, 12)
    publication = make_publication(alice, title="Harbour fox")
    ApiToken.issue(alice, "nightly-script")
    response = admin_client.get(reverse("admin:accounts_user_change", args=[alice.pk]))
    html = response.content.decode()
    assert response.status_code == 200
    assert f'class="member-balance">{balance_of(alice)}<' in html
    assert CreditAccount.objects.get(pk=alice.pk).tier.name in html
    assert reverse("admin:generation_job_change", args=[publication.image.job_id]) in html
    assert "Harbour fox" in html and reverse("gallery:thumbnail", args=[publication.pk]) in html
    assert "nightly-script" in html and "Revoke…" in html
    # The active flag is not a checkbox: suspending goes through the action with a reason.
    assert 'name="is_active"' not in html
    assert reverse("admin:accounts_user_member_action", args=[alice.pk, "suspend"]) in html


def test_carol_revokes_alices_token_from_her_page(admin_client, alice, carol):
    token, secret = ApiToken.issue(alice, "leaked")
    url = reverse("admin:accounts_user_revoke_token", args=[alice.pk, token.pk])
    assert "leaked" in admin_client.get(url).content.decode()
    admin_client.post(url)
    assert ApiToken.authenticate(secret) is None
    assert ("carol", f"Revoked API token leaked ({token.hint})") in log_lines(alice)


def test_a_token_is_revoked_only_through_its_own_members_page(admin_client, alice, bob):
    token, secret = ApiToken.issue(alice, "script")
    url = reverse("admin:accounts_user_revoke_token", args=[bob.pk, token.pk])
    assert admin_client.post(url).status_code == 404
    assert ApiToken.authenticate(secret) is not None


def test_the_members_list_filters_by_tier_suspension_balance_and_search(
    admin_client, alice, bob, carol
):
    set_balance(alice, 150)
    set_balance(bob, 0)
    set_balance(carol, 5)
    studio = MembershipTier.objects.create(name="Studio", slug="studio", rank=9)
    CreditAccount.objects.filter(pk=bob.pk).update(tier=studio)
    bob.is_active = False
    bob.save(update_fields=["is_active"])

    def listed(**query) -> set[str]:
        response = admin_client.get(reverse(CHANGELIST), query)
        assert response.status_code == 200
        return {u.username for u in response.context["cl"].result_list}

    assert listed(tier="studio") == {"bob"}
    assert listed(suspended="yes") == {"bob"}
    assert listed(suspended="no") == {"alice", "carol"}
    assert listed(balance="100+") == {"alice"}
    assert listed(balance="0") == {"bob"}
    assert listed(balance="0-10") == {"carol"}
    assert listed(active="never") == {"alice", "bob"}  # carol logged in (force_login)
    assert listed(q="alice@example") == {"alice"}
    User.objects.filter(pk=alice.pk).update(date_joined=timezone.now() - timedelta(days=400))
    since = (timezone.now() - timedelta(days=7)).isoformat()
    assert listed(date_joined__gte=since) == {"bob", "carol"}


def test_staff_without_the_change_permission_cannot_adjust_credits(client, alice, carol):
    carol.user_permissions.add(Permission.objects.get(codename="view_user"))
    client.force_login(carol)
    url = reverse("admin:accounts_user_member_action", args=[alice.pk, "credits"])
    response = client.post(url, {"amount": "500", "reason": "me", "apply": "1"})
    assert response.status_code == 403
    assert not CreditEntry.objects.of_user(alice).filter(kind="adjustment").exists()


def test_the_credit_account_page_adjusts_through_the_same_logged_service(
    admin_client, alice, carol
):
    carol.user_permissions.add(*Permission.objects.filter(codename="change_creditaccount"))
    set_balance(alice, 1)
    url = reverse("admin:accounts_creditaccount_adjust", args=[alice.pk])
    admin_client.post(url, {"amount": "9", "reason": "support ticket 12"})
    assert balance_of(alice) == Decimal("10.00")
    assert ("carol", "Credits +9.00: support ticket 12") in log_lines(alice)
