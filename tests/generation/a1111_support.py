"""Helpers for the /sdapi/v1/ tests: A1111 clients with per-user API tokens, request bodies as
real clients send them (written from reference/a1111-api.md), and the raw ASGI stack."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from asgiref.testing import ApplicationCommunicator
from django.db import connections
from django.test import AsyncClient
from PIL import Image

from accounts.models import ApiToken
from generation.models import Job
from gpu_worker.infotext import png_with_infotext

# A txt2img body as client libraries such as `webuiapi` send it: every field present, most at
# their neutral values (written from the reference's field list).
WEBUIAPI_TXT2IMG: dict[str, Any] = {
    "enable_hr": False,
    "denoising_strength": 0.7,
    "firstphase_width": 0,
    "firstphase_height": 0,
    "hr_scale": 2,
    "hr_upscaler": "Latent",
    "hr_second_pass_steps": 0,
    "hr_resize_x": 0,
    "hr_resize_y": 0,
    "prompt": "",
    "styles": [],
    "seed": -1,
    "subseed": -1,
    "subseed_strength": 0.0,
    "seed_resize_from_h": 0,
    "seed_resize_from_w": 0,
    "sampler_name": None,
    "batch_size": 1,
    "n_iter": 1,
    "steps": 20,
    "cfg_scale": 7.0,
    "width": 512,
    "height": 512,
    "restore_faces": False,
    "tiling": False,
    "do_not_save_samples": False,
    "do_not_save_grid": False,
    "negative_prompt": "",
    "eta": 1.0,
    "s_churn": 0,
    "s_tmax": 0,
    "s_tmin": 0,
    "s_noise": 1,
    "override_settings": {},
    "override_settings_restore_afterwards": True,
    "script_args": [],
    "script_name": None,
    "send_images": True,
    "save_images": False,
    "alwayson_scripts": {},
    "sampler_index": "Euler",
}


def basic_header(username: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{secret}".encode()).decode()


def token_for(user: Any) -> str:
    _token, secret = ApiToken.issue(user, "a1111 client")
    return secret


class SdapiClient(AsyncClient):
    """An A1111 client: every request carries the user's Authorization header, and runs in its
    own thread-sensitive context as under Django's ASGIHandler (the test client has none: a
    waiting request would otherwise hold the one thread the test's own queries need)."""

    def __init__(self, authorization: str = "") -> None:
        super().__init__()
        self.authorization = authorization

    def generic(self, *args: Any, **kwargs: Any) -> Any:
        if self.authorization:
            extra = kwargs.get("headers") or {}
            kwargs["headers"] = {"Authorization": self.authorization, **extra}
        return super().generic(*args, **kwargs)

    async def request(self, **request: Any) -> Any:
        async with ThreadSensitiveContext():
            try:
                return await super().request(**request)
            finally:
                # Django's request_finished would close them; the test client does not send it.
                await sync_to_async(connections.close_all)()


@pytest.fixture
async def thread_connections_closed() -> AsyncIterator[None]:
    """Close what the test's own sync_to_async thread opened (Postgres refuses to drop a test
    database that still has sessions)."""
    yield
    await sync_to_async(connections.close_all)()


def sdapi_client(user: Any, bearer: bool = False) -> SdapiClient:
    secret = token_for(user)
    header = f"Bearer {secret}" if bearer else basic_header(user.get_username(), secret)
    return SdapiClient(header)


async def post(client: AsyncClient, path: str, body: Any = None) -> Any:
    return await client.post(
        f"/sdapi/v1/{path}", json.dumps(body if body is not None else {}), "application/json"
    )


async def get(client: AsyncClient, path: str) -> Any:
    return await client.get(f"/sdapi/v1/{path}")


def png_b64(size: tuple[int, int] = (64, 64), color: str = "teal", infotext: str = "") -> str:
    image = Image.new("RGB", size, color)
    if infotext:
        data = png_with_infotext(image, infotext)
    else:
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        data = buffer.getvalue()
    return base64.b64encode(data).decode()


async def wait_for_job(user: Any, status: str | None = None, timeout: float = 30.0) -> Job:
    """The user's newest job, once it exists (and has `status`, if given)."""

    def find() -> Job | None:
        jobs = Job.objects.owned_by(user).select_related("checkpoint").order_by("-created_at")
        if status:
            jobs = jobs.filter(status=status)
        return jobs.first()

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (job := await sync_to_async(find)()) is None:
        assert loop.time() < deadline, f"no {status or ''} job of {user} in time"
        await asyncio.sleep(0.02)
    return job


def http_scope(method: str, path: str, authorization: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"authorization", authorization.encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def asgi_request(
    method: str, path: str, authorization: str, body: Any = None
) -> ApplicationCommunicator:
    """A request sent to the real ASGI application (as daphne would), left open."""
    from config.asgi import application

    communicator = ApplicationCommunicator(application, http_scope(method, path, authorization))
    payload = json.dumps(body).encode() if body is not None else b""
    await communicator.send_input({"type": "http.request", "body": payload, "more_body": False})
    return communicator


async def asgi_response(communicator: ApplicationCommunicator, timeout: float = 30) -> Any:
    start = await communicator.receive_output(timeout)
    chunks = []
    while True:
        message = await communicator.receive_output(timeout)
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return start["status"], json.loads(b"".join(chunks) or b"null")
