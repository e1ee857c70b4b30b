from __future__ import annotations

import pytest
from django.test import Client

from gallery.models import Publication
from tests.gallery.factories import make_publication


@pytest.fixture
def client_for(db):
    """A logged-in client for a user, or an anonymous one for None."""

    def make(user) -> Client:
        client = Client()
        if user is not None:
            client.force_login(user)
        return client

    return make


@pytest.fixture
def alices_public(alice) -> Publication:
    return make_publication(alice, title="Misty fox")
