"""Requests sent to the real ASGI application as daphne sends them: a peer address, raw headers,
the body in one message or streamed in chunks."""

from __future__ import annotations

from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any

from asgiref.testing import ApplicationCommunicator


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    cookies: SimpleCookie = field(default_factory=SimpleCookie)

    def json(self) -> Any:
        import json

        return json.loads(self.body)


async def call(
    method: str,
    path: str,
    *,
    peer: str = "127.0.0.1",
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    chunks: list[bytes] | None = None,
    timeout: float = 30,
) -> Answer:
    """One request; `chunks` streams the body without a Content-Length."""
    from config.asgi import application

    raw_headers = [(b"host", b"localhost")]
    raw_headers += [(name.lower().encode(), value.encode()) for name, value in headers or []]
    if chunks is None:
        raw_headers.append((b"content-length", str(len(body)).encode()))
    path_only, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path_only,
        "raw_path": path_only.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": raw_headers,
        "client": [peer, 50000],
        "server": ["127.0.0.1", 8000],
    }
    communicator = ApplicationCommunicator(application, scope)
    parts = chunks if chunks is not None else [body]
    for index, part in enumerate(parts):
        more = index < len(parts) - 1
        await communicator.send_input({"type": "http.request", "body": part, "more_body": more})
    start = await communicator.receive_output(timeout)
    content = b""
    while True:
        message = await communicator.receive_output(timeout)
        content += message.get("body", b"")
        if not message.get("more_body"):
            break
    await communicator.wait(timeout)
    answer_headers: dict[str, str] = {}
    cookies: SimpleCookie = SimpleCookie()
    for name, value in start["headers"]:
        if name.lower() == b"set-cookie":
            cookies.load(value.decode())
        answer_headers[name.decode().lower()] = value.decode()
    return Answer(start["status"], answer_headers, content, cookies)
