"""Request bodies at the edge (issue 14, items 5 to 7), through the real ASGI application: what
the README promises fits (a 3.1 MB PNG as base64 in JSON), anything bigger is a JSON 413 naming
the body and the limit before Django reads it (anonymous or not), and a JSON body that is not an
object is a 400, never a 500."""

from __future__ import annotations

import asyncio
import base64
import json
import os

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.db import connections
from PIL import Image

from accounts.models import ApiToken
from gallery.png_info import MAX_UPLOAD_BYTES as PNG_INFO_LIMIT
from generation.limits import DEFAULT_LIMITS
from generation.models import Job
from generation.submission import cancel_job
from gpu_worker.infotext import png_with_infotext
from tests.asgi_calls import call
from tests.generation.a1111_support import basic_header, wait_for_job
from tests.generation.conftest import SMALL

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def closed_connections():
    yield
    await sync_to_async(connections.close_all)()


@pytest.fixture(scope="module")
def big_png() -> str:
    """A valid 1024x1024 PNG of noise: about 3.1 MB, 4.2 MB as base64 (over Django's 2.5 MiB)."""
    image = Image.frombytes("RGB", (1024, 1024), os.urandom(1024 * 1024 * 3))
    data = png_with_infotext(image, "a noisy field\nSteps: 20, Sampler: Euler, Seed: 7")
    assert 3_000_000 < len(data) < 3_300_000
    return base64.b64encode(data).decode()


def json_headers(authorization: str = "") -> list[tuple[str, str]]:
    headers = [("content-type", "application/json")]
    if authorization:
        headers.append(("authorization", authorization))
    return headers


async def auth_of(user) -> str:
    _token, secret = await sync_to_async(ApiToken.issue)(user, "script")
    return basic_header(user.get_username(), secret)


def test_the_default_body_limit_fits_every_advertised_upload_as_base64_json():
    for upload in (DEFAULT_LIMITS.max_init_image_bytes, PNG_INFO_LIMIT):
        as_base64 = -(-upload // 3) * 4
        assert as_base64 + 64 * 1024 <= django_settings.MAX_REQUEST_BODY_BYTES
    assert django_settings.DATA_UPLOAD_MAX_MEMORY_SIZE == django_settings.MAX_REQUEST_BODY_BYTES


# --- what is promised fits ----------------------------------------------------------------------


async def test_a_3_mb_png_fits_a1111_img2img(alice, catalogue, broker, big_png, closed_connections):
    body = {**SMALL, "init_images": [big_png], "denoising_strength": 0.5}
    task = call(
        "POST",
        "/sdapi/v1/img2img",
        headers=json_headers(await auth_of(alice)),
        body=json.dumps(body).encode(),
    )
    answer = asyncio.ensure_future(task)
    job = await wait_for_job(alice)
    assert job.mode == "img2img" and job.init_image
    await sync_to_async(cancel_job)(alice, job)
    assert (await answer).status == 200


async def test_a_3_mb_png_fits_a1111_png_info(alice, big_png, closed_connections):
    answer = await call(
        "POST",
        "/sdapi/v1/png-info",
        headers=json_headers(await auth_of(alice)),
        body=json.dumps({"image": big_png}).encode(),
    )
    assert answer.status == 200, answer.body[:300]
    assert answer.json()["info"].startswith("a noisy field")


async def test_a_3_mb_png_fits_the_rest_api(alice, catalogue, broker, big_png, closed_connections):
    body = {**SMALL, "init_image": big_png, "denoising_strength": 0.5}
    answer = await call(
        "POST",
        "/api/v1/jobs/",
        headers=json_headers(await auth_of(alice)),
        body=json.dumps(body).encode(),
    )
    assert answer.status == 201, answer.body[:300]
    job = await sync_to_async(Job.objects.get)(pk=answer.json()["id"])
    assert job.mode == "img2img" and job.init_image


# --- what does not fit --------------------------------------------------------------------------


@pytest.fixture
def one_mib_limit(settings):
    settings.MAX_REQUEST_BODY_BYTES = settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2**20
    return 2**20


@pytest.mark.parametrize("path", ["/sdapi/v1/txt2img", "/sdapi/v1/png-info", "/api/v1/jobs/"])
async def test_an_anonymous_body_over_the_limit_is_a_json_413_before_authentication(
    path, one_mib_limit
):
    answer = await call("POST", path, headers=json_headers(), body=b"x" * (one_mib_limit + 1))
    assert answer.status == 413
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["field"] == "body" and answer.json()["limit"] == one_mib_limit
    assert str(one_mib_limit) in answer.json()["detail"]


async def test_a_streamed_body_without_a_length_is_cut_at_the_limit(one_mib_limit):
    chunks = [b"x" * 256 * 1024] * 5  # 1.25 MiB in chunks, no Content-Length
    answer = await call("POST", "/api/v1/jobs/quote/", headers=json_headers(), chunks=chunks)
    assert answer.status == 413 and answer.json()["limit"] == one_mib_limit


async def test_a_streamed_body_under_the_limit_reaches_the_view(
    alice, catalogue, one_mib_limit, closed_connections
):
    text = json.dumps(SMALL).encode()
    chunks = [text[:10], text[10:]]
    auth = await auth_of(alice)
    answer = await call("POST", "/api/v1/jobs/quote/", headers=json_headers(auth), chunks=chunks)
    assert answer.status == 200 and "price" in answer.json()


async def test_the_stripe_webhook_refuses_a_huge_body_too(one_mib_limit):
    answer = await call(
        "POST", "/accounts/stripe/webhook/", headers=json_headers(), body=b"x" * (2**20 + 1)
    )
    assert answer.status == 413
    assert answer.headers["content-type"].startswith("text/plain")


async def test_an_init_image_over_its_own_limit_names_the_field_and_the_limit(
    alice, catalogue, closed_connections
):
    too_big = "A" * (-(-(DEFAULT_LIMITS.max_init_image_bytes + 1024) // 3) * 4)
    body = json.dumps({**SMALL, "init_images": [too_big]}).encode()
    assert len(body) < django_settings.MAX_REQUEST_BODY_BYTES
    auth = await auth_of(alice)
    answer = await call("POST", "/sdapi/v1/img2img", headers=json_headers(auth), body=body)
    assert answer.status == 422
    assert answer.json()["field"] == "init_images"
    assert str(DEFAULT_LIMITS.max_init_image_bytes) in answer.json()["detail"]


# --- bodies that are JSON but not an object -----------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/jobs/", "/api/v1/jobs/quote/"])
@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"null", b"7"])
async def test_a_json_body_that_is_not_an_object_is_a_400_saying_so(
    path, body, alice, closed_connections
):
    answer = await call("POST", path, headers=json_headers(await auth_of(alice)), body=body)
    assert answer.status == 400, answer.body[:300]
    assert answer.json()["field"] == "body"
    assert "must be an object" in answer.json()["detail"]
