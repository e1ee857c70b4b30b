"""Free-credit farming: sign-ups throttled per address, no grant before a verified address,
no hint that an address is registered, suspicious sign-ups flagged for admins."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from accounts.grants import grant_periodic_credits
from accounts.models import CreditEntry, User
from accounts.signup_review import DISPOSABLE_EMAIL, SAME_ADDRESS
from tests.accounts.conftest import balance_of
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]


def sign_up(name: str, email: str | None = None, address: str = "203.0.113.7"):
    client = Client(REMOTE_ADDR=address)
    response = client.post(
        reverse("signup"),
        {
            "username": name,
            "email": email or f"{name}@example.com",
            "password1": PASSWORD,
            "password2": PASSWORD,
        },
    )
    return client, response


@pytest.fixture
def verification_on(settings, tiers):
    settings.ACCOUNT_EMAIL_VERIFICATION = "mandatory"


def confirmation_link(message) -> str:
    link = re.search(r"https?://[^/\s]+(/\S*/confirm-email/\S+/)", message.body)
    assert link, message.body
    return link.group(1)


# --- throttling ------------------------------------------------------------------------------


def test_a_burst_of_signups_from_one_address_stops_at_the_limit(tiers):
    answers = [sign_up(f"farmer{i}")[1].status_code for i in range(7)]
    assert answers == [302] * 5 + [429] * 2
    assert User.objects.filter(username__startswith="farmer").count() == 5


def test_a_throttled_address_does_not_stop_another_address(tiers):
    for i in range(6):
        sign_up(f"farmer{i}")
    _client, response = sign_up("dora", address="198.51.100.4")
    assert response.status_code == 302
    assert User.objects.filter(username="dora").exists()


def test_with_verification_on_a_burst_of_signups_earns_no_credits(verification_on):
    for i in range(5):
        sign_up(f"farmer{i}")
    grant_periodic_credits()
    farmers = User.objects.filter(username__startswith="farmer")
    assert farmers.count() == 5
    assert not CreditEntry.objects.filter(account__user__in=farmers).exists()


# --- verification before any grant ------------------------------------------------------------


def test_an_unverified_member_gets_no_grant_until_verified_then_exactly_one(
    verification_on, mailoutbox
):
    client, response = sign_up("dora")
    assert response.status_code == 302
    dora = User.objects.get(username="dora")
    assert balance_of(dora) == 0
    assert grant_periodic_credits() == 0  # not the daily grant either
    assert balance_of(dora) == 0

    link = confirmation_link(mailoutbox[-1])
    assert client.get(link).status_code == 200
    assert client.post(link).status_code == 302
    assert balance_of(dora) == tiers_welcome(dora)
    # Confirming again (a second click, a second address) grants nothing more.
    client.post(link)
    assert CreditEntry.objects.filter(account__user=dora, key="welcome").count() == 1
    assert balance_of(dora) == tiers_welcome(dora)
    # From now on the periodic grant comes too.
    assert grant_periodic_credits() == 1
    assert balance_of(dora) == tiers_welcome(dora) + Decimal("5")


def tiers_welcome(user: User) -> Decimal:
    return user.credit_account.tier.welcome_grant


def test_with_verification_off_a_new_member_gets_the_welcome_grant_at_once(tiers):
    _client, response = sign_up("dora")
    assert response.status_code == 302
    dora = User.objects.get(username="dora")
    assert balance_of(dora) == Decimal("20")
    assert CreditEntry.objects.filter(account__user=dora).count() == 1


def test_a_member_made_by_staff_gets_no_grant_without_a_verified_address(verification_on, bob):
    # bob has no verified address (made by create_user, as createsuperuser or a script would).
    grant_periodic_credits()
    assert balance_of(bob) == 0


# --- no enumeration ---------------------------------------------------------------------------


def _page(response, email: str) -> str:
    """The page with its CSRF token and the address the visitor typed blanked out."""
    page = re.sub(r'name="csrfmiddlewaretoken" value="[^"]+"', "", response.content.decode())
    return page.replace(email, "EMAIL")


def test_the_signup_response_is_identical_for_a_registered_and_a_new_email(
    verification_on, alice, mailoutbox
):
    taken_client, taken = sign_up("dora", email="ALICE@example.com")
    new_client, new = sign_up("erin", email="ERIN@example.com", address="198.51.100.4")
    assert taken.status_code == new.status_code == 302
    assert taken["Location"] == new["Location"]
    taken_page = _page(taken_client.get(taken["Location"]), "alice@example.com")
    new_page = _page(new_client.get(new["Location"]), "erin@example.com")
    assert "EMAIL" in new_page
    assert taken_page == new_page
    # No second account on alice's address; both addresses got a mail (alice's says she has one).
    assert not User.objects.filter(username="dora").exists()
    assert sorted(m.to[0].lower() for m in mailoutbox) == ["alice@example.com", "erin@example.com"]


# --- flags for admins -------------------------------------------------------------------------


def test_many_signups_from_one_address_are_all_flagged(tiers, alice):
    for i in range(3):
        sign_up(f"farmer{i}")
    flags = dict(User.objects.values_list("username", "signup_flags"))
    assert all(SAME_ADDRESS in flags[f"farmer{i}"] for i in range(3))
    assert flags["alice"] == ""
    assert User.objects.get(username="farmer0").signup_address == "203.0.113.7"


def test_two_signups_from_one_address_are_not_flagged(tiers):
    sign_up("dora")
    sign_up("erin")
    assert set(User.objects.values_list("signup_flags", flat=True)) == {""}


def test_a_disposable_email_domain_is_flagged(tiers):
    sign_up("dora", email="dora@mailinator.com")
    sign_up("erin", email="erin@inbox.yopmail.com", address="198.51.100.4")
    sign_up("fred", email="fred@example.org", address="198.51.100.5")
    flags = dict(User.objects.values_list("username", "signup_flags"))
    assert flags == {"dora": DISPOSABLE_EMAIL, "erin": DISPOSABLE_EMAIL, "fred": ""}


# --- social log-in from the environment -------------------------------------------------------


def test_without_provider_settings_there_are_no_social_buttons(client):
    for name in ("login", "signup"):
        page = client.get(reverse(name)).content.decode()
        assert "Or continue with" not in page


def _settings_with(env: dict[str, str]) -> str:
    code = (
        "import config.settings as s; "
        "print(sorted(s.SOCIALACCOUNT_PROVIDERS), s.ACCOUNT_EMAIL_VERIFICATION, "
        "[a for a in s.INSTALLED_APPS if 'providers' in a])"
    )
    clean = {k: v for k, v in os.environ.items() if not k.endswith(("_CLIENT_ID", "_SECRET"))}
    clean.pop("EMAIL_VERIFICATION", None)
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def test_a_provider_is_offered_only_with_both_its_id_and_secret():
    assert _settings_with({}) == "[] none []"
    out = _settings_with(
        {"GITHUB_CLIENT_ID": "id", "GITHUB_CLIENT_SECRET": "s", "GOOGLE_CLIENT_ID": "only-id"}
    )
    assert out == "['github'] none ['allauth.socialaccount.providers.github']"


def test_verification_is_on_in_production_and_can_be_turned_off():
    production = {"ATELIER_MODE": "production", "SECRET_KEY": "x" * 50}
    assert _settings_with(production).split()[1] == "mandatory"
    off = _settings_with({**production, "EMAIL_VERIFICATION": "false"})
    assert off.split()[1] == "none"
    assert _settings_with({"EMAIL_VERIFICATION": "true"}).split()[1] == "mandatory"


def test_carol_filters_the_members_list_on_suspicious_signups(client, carol, alice, tiers):
    carol.user_permissions.add(*Permission.objects.filter(codename__in=["view_user"]))
    for i in range(3):
        sign_up(f"farmer{i}")
    sign_up("dora", email="dora@yopmail.com", address="198.51.100.4")
    client.force_login(carol)
    changelist = reverse("admin:accounts_user_changelist")

    def listed(query: str) -> set[str]:
        response = client.get(changelist + query)
        assert response.status_code == 200
        return {user.username for user in response.context["cl"].result_list}

    assert listed("?suspicious=yes") == {"farmer0", "farmer1", "farmer2", "dora"}
    assert listed(f"?suspicious={SAME_ADDRESS}") == {"farmer0", "farmer1", "farmer2"}
    assert listed(f"?suspicious={DISPOSABLE_EMAIL}") == {"dora"}
    assert listed("?suspicious=no") == {"alice", "carol"}


def test_an_unverified_member_is_told_how_to_earn_free_credits(verification_on, mailoutbox):
    client, _response = sign_up("dora")
    client.force_login(User.objects.get(username="dora"))
    assert "verify-email" in client.get(reverse("credits")).content.decode()
    client.post(confirmation_link(mailoutbox[-1]))
    assert "verify-email" not in client.get(reverse("credits")).content.decode()


def test_a_configured_provider_shows_a_button_that_starts_its_log_in(tmp_path):
    """Providers are installed apps chosen at start-up, so this runs a fresh process."""
    script = (
        "from django.core.management import call_command; call_command('migrate', verbosity=0)\n"
        "from django.test import Client\n"
        "c = Client(HTTP_HOST='localhost')\n"
        "page = c.get('/accounts/login/').content.decode()\n"
        "start = c.post('/accounts/github/login/?process=login')\n"
        "print('GitHub</button>' in page, 'Google' in page, start['Location'].split('?')[0])\n"
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.endswith(("_CLIENT_ID", "_SECRET"))},
        "ATELIER_VAR_DIR": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "GITHUB_CLIENT_ID": "an-id",
        "GITHUB_CLIENT_SECRET": "a-secret",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == (
        "True False https://github.com/login/oauth/authorize"
    )


def test_the_sign_up_limit_page_speaks_simplified_chinese(tiers):
    for i in range(5):
        sign_up(f"farmer{i}")
    client = Client(REMOTE_ADDR="203.0.113.7", HTTP_ACCEPT_LANGUAGE="zh-hans")
    response = client.post(reverse("signup"), {"username": "farmer9", "email": "f9@example.com"})
    assert response.status_code == 429
    assert "请求过多" in response.content.decode()  # "Too many requests"
