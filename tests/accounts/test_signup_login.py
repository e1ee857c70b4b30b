from __future__ import annotations

import pytest
from django.urls import reverse

from accounts.models import User
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def signup(client, **overrides):
    data = {
        "username": "dora",
        "email": "dora@example.com",
        "password1": PASSWORD,
        "password2": PASSWORD,
    }
    data.update(overrides)
    return client.post(reverse("signup"), data)


def test_a_visitor_signs_up_and_is_logged_in(client):
    response = signup(client)
    assert response.status_code == 302
    assert response["Location"] == reverse("home")
    user = User.objects.get(username="dora")
    assert user.password.startswith("md5$") or user.check_password(PASSWORD)
    home = client.get(reverse("home"))
    assert home.context["user"] == user
    assert b"dora" in home.content


def test_signup_with_a_taken_username_names_the_field(client, alice):
    response = signup(client, username="alice", email="other@example.com")
    assert response.status_code == 200
    assert "username" in response.context["form"].errors


def test_signup_with_a_taken_email_in_other_case_names_the_field(client, alice):
    response = signup(client, email="ALICE@example.com")
    assert "email" in response.context["form"].errors
    assert "already exists" in str(response.context["form"].errors["email"])


def test_signup_with_a_weak_password_says_why(client):
    response = signup(client, password1="12345678", password2="12345678")
    # django-allauth reports the password validators' verdict on the first password field.
    errors = str(response.context["form"].errors["password1"])
    assert "too common" in errors or "entirely numeric" in errors
    assert not User.objects.filter(username="dora").exists()


def test_signup_with_a_bad_email_names_the_field(client):
    response = signup(client, email="not-an-email")
    assert "email" in response.context["form"].errors


def test_alice_logs_in_and_out(client, alice):
    response = client.post(reverse("login"), {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302
    assert client.get(reverse("profile")).status_code == 200
    client.post(reverse("logout"))
    assert client.get(reverse("profile")).status_code == 302


def test_a_failed_login_does_not_reveal_whether_the_account_exists(client, alice):
    wrong_password = client.post(reverse("login"), {"username": "alice", "password": "nope-nope"})
    no_account = client.post(reverse("login"), {"username": "nobody", "password": "nope-nope"})
    assert wrong_password.status_code == no_account.status_code == 200
    assert wrong_password.context["form"].non_field_errors() == (
        no_account.context["form"].non_field_errors()
    )


def test_five_failures_lock_the_account_even_with_the_right_password(client, alice):
    for _ in range(5):
        client.post(reverse("login"), {"username": "alice", "password": "wrong-guess"})
    response = client.post(reverse("login"), {"username": "alice", "password": PASSWORD})
    assert response.status_code == 429
    assert b"15 minutes" in response.content
    assert client.get(reverse("profile")).status_code == 302


def test_a_lockout_of_alice_does_not_lock_bob(client, alice, bob):
    for _ in range(5):
        client.post(reverse("login"), {"username": "alice", "password": "wrong-guess"})
    response = client.post(reverse("login"), {"username": "bob", "password": PASSWORD})
    assert response.status_code == 302


def test_alice_changes_her_password(client, alice):
    client.force_login(alice)
    response = client.post(
        reverse("password_change"),
        {
            "old_password": PASSWORD,
            "new_password1": "a-new-long-passphrase",
            "new_password2": "a-new-long-passphrase",
        },
    )
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.check_password("a-new-long-passphrase")


def test_password_reset_sends_a_working_link(client, alice, mailoutbox):
    client.post(reverse("password_reset"), {"email": "alice@example.com"})
    assert len(mailoutbox) == 1
    link = next(line for line in mailoutbox[0].body.splitlines() if "/reset/" in line)
    path = link.split("://", 1)[1].split("/", 1)[1]
    form_page = client.get("/" + path, follow=True)
    assert form_page.context["validlink"]
    response = client.post(
        form_page.redirect_chain[-1][0],
        {"new_password1": "another-long-passphrase", "new_password2": "another-long-passphrase"},
    )
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.check_password("another-long-passphrase")


def test_the_site_speaks_simplified_chinese(client):
    response = client.get(reverse("home"), HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert response.status_code == 200
    assert 'lang="zh-hans"' in response.content.decode()
    assert "注册" in response.content.decode()  # "Sign up"


def test_the_sign_up_page_speaks_simplified_chinese(client):
    response = client.get(reverse("signup"), HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert response.status_code == 200
    assert "创建你的账户" in response.content.decode()  # "Create your account"
