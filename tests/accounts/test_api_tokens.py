from __future__ import annotations

import base64

import pytest
from django.urls import include, path, reverse
from rest_framework.decorators import api_view
from rest_framework.response import Response
from rest_framework.test import APIClient

from accounts.models import ApiToken

pytestmark = pytest.mark.django_db


@api_view(["GET"])
def whoami(request):
    return Response({"username": request.user.username})


# The real site plus one probe endpoint that reports who the API thinks is calling.
urlpatterns = [path("whoami", whoami), path("", include("config.urls"))]


def basic(username: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{secret}".encode()).decode()


@pytest.fixture
def api(settings) -> APIClient:
    settings.ROOT_URLCONF = __name__
    return APIClient()


def create_token_through_profile(client, user, name="my script") -> str:
    client.force_login(user)
    response = client.post(reverse("create_token"), {"name": name}, follow=True)
    assert response.redirect_chain[0][1] == 302
    return response.context["new_secret"]


def test_alice_creates_a_token_and_sees_its_secret_once(client, alice):
    secret = create_token_through_profile(client, alice)
    assert secret.startswith("atl_")
    token = ApiToken.objects.get(user=alice)
    assert secret not in token.token_hash  # only the hash is stored
    profile = client.get(reverse("profile")).content.decode()
    assert "my script" in profile
    assert secret not in profile


def test_reloading_the_page_after_creating_a_token_creates_no_second_token(client, alice):
    client.force_login(alice)
    response = client.post(reverse("create_token"), {"name": "my script"}, follow=True)
    secret = response.context["new_secret"]
    assert secret in response.content.decode()
    # The browser's reload repeats the GET it was redirected to, never the POST.
    reloaded = client.get(response.redirect_chain[-1][0])
    assert reloaded.status_code == 200
    assert ApiToken.objects.filter(user=alice).count() == 1
    assert secret not in reloaded.content.decode()


@pytest.mark.parametrize("form", ["bearer", "basic"])
def test_a_token_made_on_the_profile_page_works_in_both_header_forms(client, api, alice, form):
    secret = create_token_through_profile(client, alice)
    header = f"Bearer {secret}" if form == "bearer" else basic("alice", secret)
    response = api.get("/whoami", HTTP_AUTHORIZATION=header)
    assert response.status_code == 200
    assert response.json() == {"username": "alice"}


def test_whoami_reports_the_tokens_owner(api, alice, bob):
    _token, secret = ApiToken.issue(bob, "bot")
    response = api.get("/whoami", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.json() == {"username": "bob"}


def test_basic_auth_with_someone_elses_username_is_refused(api, alice, bob):
    _token, secret = ApiToken.issue(bob, "bot")
    response = api.get("/whoami", HTTP_AUTHORIZATION=basic("alice", secret))
    assert response.status_code == 401


def test_a_revoked_token_gets_401(client, api, alice):
    secret = create_token_through_profile(client, alice)
    token = ApiToken.objects.get(user=alice)
    # Worked a moment ago (the token's query is compiled once per process: it still checks)
    assert api.get("/whoami", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 200
    client.post(reverse("revoke_token", args=[token.id]))
    assert api.get("/whoami", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 401
    assert api.get("/whoami", HTTP_AUTHORIZATION=basic("alice", secret)).status_code == 401


@pytest.mark.parametrize(
    "header",
    [
        "Bearer atl_wrong",
        "Bearer",
        "Bearer a b",
        "Basic !!!notbase64",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:x").decode(),
    ],
)
def test_a_wrong_or_malformed_token_gets_401_not_500(api, alice, header):
    response = api.get("/whoami", HTTP_AUTHORIZATION=header)
    assert response.status_code == 401
    assert "detail" in response.json()


def test_a_password_is_not_an_api_credential(api, alice):
    from tests.conftest import PASSWORD

    assert api.get("/whoami", HTTP_AUTHORIZATION=basic("alice", PASSWORD)).status_code == 401


def test_bob_cannot_revoke_alices_token(client, alice, bob):
    ApiToken.issue(alice, "alice's")
    token = ApiToken.objects.get(user=alice)
    client.force_login(bob)
    assert client.post(reverse("revoke_token", args=[token.id])).status_code == 404
    token.refresh_from_db()
    assert token.is_active


def test_a_suspended_users_token_stops_working(api, alice):
    _token, secret = ApiToken.issue(alice, "bot")
    alice.is_active = False
    alice.save()
    assert api.get("/whoami", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 401
