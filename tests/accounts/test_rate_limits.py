"""Hammering redeem codes and the APIs: throttled per member and per address, 429 with
Retry-After, members' rates set per tier, counters shared through Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.test import Client, RequestFactory
from django.urls import reverse
from rest_framework.test import APIClient

from accounts.models import ApiToken, RedeemCode
from accounts.throttles import RedeemAddressThrottle
from accounts.tiers import set_tier
from tests.accounts.conftest import balance_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def rates(settings):
    """Set some throttle rates for one test (the others keep their defaults)."""

    def set_rates(**changed: str) -> None:
        framework = dict(settings.REST_FRAMEWORK)
        framework["DEFAULT_THROTTLE_RATES"] = {
            **framework["DEFAULT_THROTTLE_RATES"],
            **changed,
        }
        settings.REST_FRAMEWORK = framework

    return set_rates


def member_client(user, address: str = "203.0.113.7") -> Client:
    client = Client(REMOTE_ADDR=address)
    client.force_login(user)
    return client


def redeem(client: Client, code: str = "WRONG-GUESS"):
    return client.post(reverse("redeem"), {"code": code})


def bearer(user) -> dict[str, Any]:
    _token, secret = ApiToken.issue(user, "script")
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


# --- redeem codes -----------------------------------------------------------------------------


def test_alice_guessing_codes_is_stopped_after_the_limit(alice):
    client = member_client(alice)
    answers = [redeem(client).status_code for _ in range(12)]
    assert answers == [400] * 10 + [429] * 2  # REDEEM_THROTTLE_USER: 10/hour
    refused = redeem(client)
    assert int(refused["Retry-After"]) > 0
    assert "Too many redeem attempts" in refused.content.decode()


def test_a_throttled_member_cannot_redeem_even_a_valid_code(alice, tiers):
    RedeemCode.objects.create(code="SPRING-50", credits=Decimal("50"))
    client = member_client(alice)
    for _ in range(10):
        redeem(client)
    assert redeem(client, "SPRING-50").status_code == 429
    assert balance_of(alice) == Decimal("20")  # the welcome grant only


def test_alices_guesses_do_not_use_up_bobs_attempts_from_elsewhere(alice, bob):
    alice_client = member_client(alice)
    for _ in range(11):
        redeem(alice_client)
    assert redeem(member_client(bob, address="198.51.100.4")).status_code == 400


def test_members_sharing_an_address_share_its_limit(rates, alice, bob, carol):
    rates(redeem_address="4/hour")
    for _ in range(2):
        assert redeem(member_client(alice)).status_code == 400
        assert redeem(member_client(bob)).status_code == 400
    # A fifth attempt from the address is refused whoever makes it, not from another address.
    assert redeem(member_client(carol)).status_code == 429
    assert redeem(member_client(carol, address="198.51.100.4")).status_code == 400


# --- REST API ---------------------------------------------------------------------------------


def test_the_rest_api_answers_429_with_retry_after_past_the_tier_rate(alice, tiers):
    tiers["free"].api_requests_per_minute = 3
    tiers["free"].save()
    client = APIClient(REMOTE_ADDR="203.0.113.7")
    client.credentials(**bearer(alice))
    answers = [client.get(reverse("api-me")).status_code for _ in range(3)]
    refused = client.get(reverse("api-me"))
    assert answers == [200, 200, 200]
    assert refused.status_code == 429
    assert 0 < int(refused["Retry-After"]) <= 60
    assert "throttled" in refused.json()["detail"]


def test_each_tier_has_its_own_rate(alice, bob, tiers):
    for slug, rate in (("free", 2), ("pro", 5)):
        tiers[slug].api_requests_per_minute = rate
        tiers[slug].save()
    set_tier(bob, tiers["pro"])
    answers = {}
    for user in (alice, bob):
        client = APIClient()
        client.credentials(**bearer(user))
        answers[user.username] = [client.get(reverse("api-me")).status_code for _ in range(6)]
    assert answers["alice"] == [200] * 2 + [429] * 4
    assert answers["bob"] == [200] * 5 + [429]


def test_a_token_caller_moved_to_a_faster_tier_gets_its_rate_on_the_next_call(alice, tiers):
    """The rate comes from the tier read with the token, not from a copy kept for a minute."""
    for slug, rate in (("free", 1), ("pro", 3)):
        tiers[slug].api_requests_per_minute = rate
        tiers[slug].save()
    client = APIClient()
    client.credentials(**bearer(alice))
    assert [client.get(reverse("api-me")).status_code for _ in range(2)] == [200, 429]
    set_tier(alice, tiers["pro"])
    assert [client.get(reverse("api-me")).status_code for _ in range(2)] == [200, 429]


def test_a_tier_without_its_own_rate_uses_the_server_default(rates, alice, tiers):
    rates(user="2/min")
    client = APIClient()
    client.credentials(**bearer(alice))
    answers = [client.get(reverse("api-me")).status_code for _ in range(3)]
    assert answers == [200, 200, 429]


def test_anonymous_callers_are_throttled_per_address(rates):
    rates(anon="2/min")
    here, elsewhere = APIClient(REMOTE_ADDR="203.0.113.7"), APIClient(REMOTE_ADDR="198.51.100.4")
    answers = [here.get(reverse("api-schema")).status_code for _ in range(3)]
    assert answers == [200, 200, 429]
    assert elsewhere.get(reverse("api-schema")).status_code == 200


def test_throttle_counters_live_in_redis_for_every_web_process(redis_client, alice, tiers):
    client = APIClient()
    client.credentials(**bearer(alice))
    client.get(reverse("api-me"))
    keys = [key.decode() for key in redis_client.scan_iter("*throttle_user*")]
    assert any(key.endswith(f"throttle_user_{alice.pk}") for key in keys)


def test_a_rate_window_always_expires(redis_client, alice, tiers):
    """Counted in one atomic step: a counter never outlives its minute, so a member is never
    throttled for good."""
    client = APIClient()
    client.credentials(**bearer(alice))
    for _ in range(3):
        client.get(reverse("api-me"))
    (counter,) = [k for k in redis_client.scan_iter("*throttle_user*") if not k.endswith(b":start")]
    assert redis_client.get(counter) == b"3"
    assert 0 < redis_client.pttl(counter) <= 60_000
    assert 0 < redis_client.pttl(counter + b":start") <= 60_000


# --- A1111 API --------------------------------------------------------------------------------


def test_the_a1111_api_shares_the_members_rate_and_answers_429_as_json(alice, tiers):
    tiers["free"].api_requests_per_minute = 3
    tiers["free"].save()
    headers = bearer(alice)
    rest = APIClient()
    rest.credentials(**headers)
    sdapi = Client(**headers)
    assert rest.get(reverse("api-me")).status_code == 200
    assert [sdapi.get("/sdapi/v1/samplers").status_code for _ in range(2)] == [200, 200]
    refused = sdapi.get("/sdapi/v1/samplers")
    assert refused.status_code == 429
    assert refused.json()["error"] == "TooManyRequests"
    assert 0 < int(refused["Retry-After"]) <= 60
    assert rest.get(reverse("api-me")).status_code == 429


def test_bob_is_not_throttled_by_alices_a1111_calls(alice, bob, tiers):
    tiers["free"].api_requests_per_minute = 1
    tiers["free"].save()
    alice_sdapi, bob_sdapi = Client(**bearer(alice)), Client(**bearer(bob))
    alice_sdapi.get("/sdapi/v1/samplers")
    assert alice_sdapi.get("/sdapi/v1/samplers").status_code == 429
    assert bob_sdapi.get("/sdapi/v1/samplers").status_code == 200


def test_a_burst_spread_over_many_connections_lets_exactly_the_limit_through(rates):
    """Each thread has its own Redis connection, as each web process would."""
    rates(redeem_address="10/hour")
    request = RequestFactory().post("/accounts/credits/redeem/", REMOTE_ADDR="203.0.113.9")
    start_together = threading.Barrier(8)

    def attempt(_: int) -> bool:
        start_together.wait()
        return RedeemAddressThrottle().allow_request(request, None)

    with ThreadPoolExecutor(8) as pool:
        passed = list(pool.map(attempt, range(48)))
    assert sum(passed) == 10


@pytest.mark.parametrize(
    ("name", "value"), [("API_THROTTLE_USER", "lots"), ("SIGNUP_RATE_LIMIT", "5/hour")]
)
def test_a_mistyped_rate_stops_the_process_at_start_up(name, value):
    result = subprocess.run(
        [sys.executable, "-c", "import config.settings"],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, name: value},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert f"{name} must look like" in result.stderr


def test_with_redis_unreachable_requests_pass_unthrottled_instead_of_failing(
    settings, alice, tiers
):
    settings.CACHES = {
        "default": {**settings.CACHES["default"], "LOCATION": "redis://127.0.0.1:1/0"}
    }
    tiers["free"].api_requests_per_minute = 1
    tiers["free"].save()
    rest = APIClient()
    rest.credentials(**bearer(alice))
    assert [rest.get(reverse("api-me")).status_code for _ in range(3)] == [200, 200, 200]
    assert Client(**bearer(alice)).get("/sdapi/v1/samplers").status_code == 200
    assert redeem(member_client(alice)).status_code == 400
    signup = Client().post(
        reverse("signup"),
        {
            "username": "dora",
            "email": "dora@example.com",
            "password1": "correct-horse-battery-staple",
            "password2": "correct-horse-battery-staple",
        },
    )
    assert signup.status_code == 302
