"""Paths under /api/ and /sdapi/ never answer HTML: unknown endpoints, wrong methods, bodies
Django refuses and server errors are JSON there; the pages keep their HTML (issue 14, item 6)."""

from __future__ import annotations

import json

import pytest
from django.test import Client, RequestFactory
from django.urls import get_resolver
from rest_framework.test import APIClient

from accounts.models import ApiToken

pytestmark = pytest.mark.django_db


def assert_json_error(response, status: int) -> dict:
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    body = json.loads(response.content)
    assert body["detail"]
    return body


@pytest.mark.parametrize("path", ["/api/v1/nothing-here/", "/sdapi/v1/nothing-here", "/api/"])
def test_an_unknown_api_endpoint_is_a_json_404(client, path):
    body = assert_json_error(client.get(path), 404)
    assert body["error"] == "NotFound" and path in body["detail"]


def test_an_unknown_page_is_still_an_html_404(client):
    response = client.get("/nothing-here/")
    assert response.status_code == 404 and response["Content-Type"].startswith("text/html")


def test_a_wrong_method_is_a_json_405_on_both_apis(alice):
    api = APIClient()
    api.force_authenticate(alice)
    assert_json_error(api.delete("/api/v1/jobs/quote/"), 405)
    assert_json_error(Client().get("/sdapi/v1/txt2img"), 405)


def test_a_body_django_refuses_is_a_json_413_naming_the_body_and_the_limit(alice, settings):
    # Without the ASGI layer in front (the test client), Django's own limit answers.
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    _token, secret = ApiToken.issue(alice, "script")
    response = Client(headers={"Authorization": f"Bearer {secret}"}).post(
        "/sdapi/v1/png-info", {"image": "A" * 2000}, content_type="application/json"
    )
    body = assert_json_error(response, 413)
    assert body["field"] == "body" and body["limit"] == 1000


def test_a_server_error_on_an_api_path_is_json_and_a_page_stays_html():
    handler = get_resolver().resolve_error_handler(500)
    factory = RequestFactory()
    body = assert_json_error(handler(factory.get("/api/v1/jobs/")), 500)
    assert body["error"] == "InternalServerError"
    assert handler(factory.get("/gallery/"))["Content-Type"].startswith("text/html")


def test_a_browser_asking_the_rest_api_for_html_gets_json_and_the_docs_stay_pages(client):
    browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    response = client.get("/api/v1/jobs/", headers={"Accept": browser})
    assert_json_error(response, 401)
    assert client.get("/api/docs/")["Content-Type"].startswith("text/html")
    assert client.get("/api/schema/").status_code == 200
