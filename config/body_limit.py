"""The one request-body limit, enforced before Django reads a byte of the body.

A declared Content-Length over the limit is refused at once; a streamed body (no length, or one
that lies) is refused as soon as it passes the limit, by ending the body Django is reading and
answering 413 in its place. API paths answer JSON, others plain text. `settings.
MAX_REQUEST_BODY_BYTES` sizes it (also Django's DATA_UPLOAD_MAX_MEMORY_SIZE), read per request so
tests can change it.

daphne reads a whole request before it calls any application, and copies the body into memory
for it: config/daphne_server.py refuses there, before that copy. The reverse proxy's own limit
(README, Deploy) is what keeps a huge upload from being received at all.
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings

from config.error_bodies import body_too_large, is_api_path

Scope = dict[str, Any]
Message = dict[str, Any]


def declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def refusal(scope: Scope, limit: int) -> list[Message]:
    """The 413 answer, as ASGI messages."""
    if is_api_path(scope.get("path", "")):
        body = json.dumps(body_too_large(limit)).encode()
        content_type = b"application/json"
    else:
        body = f"The request body is larger than {limit} bytes.".encode()
        content_type = b"text/plain; charset=utf-8"
    start = {
        "type": "http.response.start",
        "status": 413,
        "headers": [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ],
    }
    return [start, {"type": "http.response.body", "body": body}]


async def refuse(scope: Scope, send: Any, limit: int) -> None:
    for message in refusal(scope, limit):
        await send(message)


class BodySizeLimit:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit: int = settings.MAX_REQUEST_BODY_BYTES
        length = declared_length(scope)
        if length is not None and length > limit:
            return await refuse(scope, send, limit)

        received = 0
        overflowed = False
        response_started = False

        async def counted_receive() -> Message:
            nonlocal received, overflowed
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Django stops reading and answers nothing: we answer below.
                    overflowed = True
                    return {"type": "http.disconnect"}
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        await self.app(scope, counted_receive, tracked_send)
        if overflowed and not response_started:
            await refuse(scope, send, limit)
