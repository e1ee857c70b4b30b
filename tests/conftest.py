"""The small world every test lives in: alice and bob (members) and carol (staff)."""

from __future__ import annotations

import importlib
import os
import uuid

import pytest
import redis
from django.apps import apps as django_apps

from accounts.models import User

# The real GPU worker's fixtures, for every module that runs jobs on the diffusers engine.
pytest_plugins = ["tests.generation.real_worker"]

PASSWORD = "correct-horse-battery-staple"


def make_user(username: str, **extra: object) -> User:
    return User.objects.create_user(
        username=username, email=f"{username}@example.com", password=PASSWORD, **extra
    )


@pytest.fixture(autouse=True)
def fresh_rate_limits(settings) -> None:
    """Throttle counters live in the shared (Redis) cache: a key prefix per test keeps one
    test's requests from counting against the next."""
    settings.CACHES = {
        "default": {**settings.CACHES["default"], "KEY_PREFIX": f"test-{uuid.uuid4().hex}"}
    }


@pytest.fixture
def alice(db) -> User:
    return make_user("alice")


@pytest.fixture
def bob(db) -> User:
    return make_user("bob")


@pytest.fixture
def carol(db) -> User:
    return make_user("carol", is_staff=True)


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.fail("REDIS_URL is not set: run the suite with `make test`")
    return url


@pytest.fixture
def redis_client(redis_url: str) -> redis.Redis:
    """A real Redis, emptied before each test that asks for it."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    return client


_default_tiers = importlib.import_module("accounts.migrations.0003_default_tiers")


@pytest.fixture(autouse=True)
def default_tiers_after_a_flush(request: pytest.FixtureRequest) -> None:
    """The tiers a data migration makes (Free, Member, Pro), there for every test with the
    database. A transactional test ends with a flush that removes them; run alone, pytest-django
    orders those tests last, but spread over pytest-xdist workers (`make test XDIST=...`) a
    plain test may follow one on the same database: it gets them back, inside its own
    transaction (rolled back with it)."""
    marker = request.node.get_closest_marker("django_db")
    transactional = "transactional_db" in request.fixturenames or (
        marker is not None and marker.kwargs.get("transaction", False)
    )
    if transactional or (marker is None and "db" not in request.fixturenames):
        return
    request.getfixturevalue("db")
    _default_tiers.create_tiers(django_apps, None)
