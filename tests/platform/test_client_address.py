"""REMOTE_ADDR is the real client: X-Forwarded-For counts only from TRUSTED_PROXIES, so the
log-in lockout (django-axes) locks the attacker's address, not the proxy's, and a forged header
from anyone else changes nothing (issue 14, item 8)."""

from __future__ import annotations

from ipaddress import ip_network
from urllib.parse import urlencode

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from config.client_address import ClientAddressFromProxy, real_client
from config.env import ImproperEnvironment, env_networks
from tests.asgi_calls import call
from tests.conftest import PASSWORD

PROXY = "10.0.0.2"
ALICE_HOME = "203.0.113.7"
MALLORY = "198.51.100.9"
PROXIES = [ip_network("10.0.0.0/24"), ip_network("fd00::/8")]


# --- which hop is the client ----------------------------------------------------------------


def test_a_direct_connection_is_its_own_client_whatever_it_forwards():
    assert real_client(MALLORY, ["1.2.3.4"], PROXIES) == MALLORY
    assert real_client(MALLORY, ["1.2.3.4"], []) == MALLORY


def test_through_a_trusted_proxy_the_client_is_the_hop_the_proxy_saw():
    assert real_client(PROXY, [ALICE_HOME], PROXIES) == ALICE_HOME
    # Mallory writes the left part herself; the proxy appends the address it really saw.
    assert real_client(PROXY, [f"6.6.6.6, {MALLORY}"], PROXIES) == MALLORY
    # Two trusted proxies in a row, the header split over two lines.
    assert real_client(PROXY, [ALICE_HOME, "10.0.0.9"], PROXIES) == ALICE_HOME
    assert real_client("fd00::1", ["2001:db8::5"], PROXIES) == "2001:db8::5"


def test_an_unreadable_hop_stops_the_walk_at_the_last_trusted_proxy():
    assert real_client(PROXY, [f"{ALICE_HOME}, garbage"], PROXIES) == PROXY
    assert real_client(PROXY, [], PROXIES) == PROXY


def test_trusted_proxies_are_parsed_strictly(monkeypatch):
    monkeypatch.setenv("TRUSTED_PROXIES", "10.0.0.2, 172.16.0.0/12,::1")
    assert [str(n) for n in env_networks("TRUSTED_PROXIES")] == [
        "10.0.0.2/32",
        "172.16.0.0/12",
        "::1/128",
    ]
    for bad in ("proxy.internal", "10.0.0.0/33", "10.0.0.1/24"):
        monkeypatch.setenv("TRUSTED_PROXIES", bad)
        with pytest.raises(ImproperEnvironment, match="TRUSTED_PROXIES"):
            env_networks("TRUSTED_PROXIES")


async def seen_by_the_application(scope: dict) -> dict:
    seen: dict = {}

    async def application(scope, receive, send):
        seen.update(scope)

    await ClientAddressFromProxy(application)(scope, None, None)
    return seen


@pytest.mark.parametrize("kind", ["http", "websocket"])
async def test_the_application_sees_the_real_client_and_never_the_header(kind, settings):
    settings.TRUSTED_PROXIES = PROXIES
    headers = [(b"host", b"localhost"), (b"x-forwarded-for", ALICE_HOME.encode())]
    proxied = await seen_by_the_application(
        {"type": kind, "client": [PROXY, 4000], "headers": headers}
    )
    assert proxied["client"][0] == ALICE_HOME
    assert proxied["headers"] == [(b"host", b"localhost")]
    direct = await seen_by_the_application(
        {"type": kind, "client": [MALLORY, 4000], "headers": headers}
    )
    assert direct["client"] == [MALLORY, 4000] and direct["headers"] == [(b"host", b"localhost")]
    assert "client" not in await seen_by_the_application({"type": kind, "headers": headers})


# --- the lockout through the real ASGI stack ----------------------------------------------------


async def log_in(peer: str, username: str, password: str, forwarded: str | None = None) -> int:
    headers = [("x-forwarded-for", forwarded)] if forwarded else []
    page = await call("GET", "/accounts/login/", peer=peer, headers=headers)
    token = page.cookies["csrftoken"].value
    form = urlencode({"username": username, "password": password, "csrfmiddlewaretoken": token})
    answer = await call(
        "POST",
        "/accounts/login/",
        peer=peer,
        headers=[
            *headers,
            ("content-type", "application/x-www-form-urlencoded"),
            ("cookie", f"csrftoken={token}"),
        ],
        body=form.encode(),
    )
    return answer.status


@pytest.fixture
def behind_proxy(settings):
    settings.TRUSTED_PROXIES = PROXIES


@pytest.fixture
async def closed_connections():
    yield
    await sync_to_async(connections.close_all)()


pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("closed_connections"),
]


async def test_behind_the_proxy_mallorys_failures_lock_her_address_not_alices(alice, behind_proxy):
    for _ in range(5):
        await log_in(PROXY, "alice", "wrong-guess", forwarded=MALLORY)
    assert await log_in(PROXY, "alice", PASSWORD, forwarded=MALLORY) == 429
    assert await log_in(PROXY, "alice", PASSWORD, forwarded=ALICE_HOME) == 302


async def test_a_forged_forwarded_for_from_an_untrusted_peer_is_ignored(alice, behind_proxy):
    for i in range(5):
        await log_in(MALLORY, "alice", "wrong-guess", forwarded=f"192.0.2.{i}")
    # Every try counted against Mallory's own address, whatever she claimed.
    assert await log_in(MALLORY, "alice", PASSWORD, forwarded="192.0.2.77") == 429
    assert await log_in(PROXY, "alice", PASSWORD, forwarded=ALICE_HOME) == 302


async def test_without_trusted_proxies_each_direct_peer_is_its_own_client(alice, settings):
    settings.TRUSTED_PROXIES = []
    for _ in range(5):
        await log_in(MALLORY, "alice", "wrong-guess")
    assert await log_in(MALLORY, "alice", PASSWORD) == 429
    assert await log_in(ALICE_HOME, "alice", PASSWORD) == 302
    # A proxy that is not configured as trusted is just one more client.
    assert await log_in(PROXY, "alice", PASSWORD, forwarded=MALLORY) == 302
