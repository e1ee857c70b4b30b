"""A tus client over the Django test client: enough of the protocol for the tests' uploads."""

from __future__ import annotations

import base64
from typing import Any

TUS = {"HTTP_TUS_RESUMABLE": "1.0.0"}
UPLOADS = "/api/v1/own-models/uploads/"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def start_upload(client: Any, length: int, name: str, **more: str) -> Any:
    metadata = ",".join(f"{key} {_b64(value)}" for key, value in {"name": name, **more}.items())
    return client.post(
        UPLOADS, HTTP_UPLOAD_LENGTH=str(length), HTTP_UPLOAD_METADATA=metadata, **TUS
    )


def send_chunk(client: Any, location: str, offset: int, chunk: bytes) -> Any:
    return client.patch(
        location,
        data=chunk,
        content_type="application/offset+octet-stream",
        HTTP_UPLOAD_OFFSET=str(offset),
        **TUS,
    )


def upload(client: Any, data: bytes, name: str, chunk: int = 64, **more: str) -> Any:
    """The whole file in chunks; returns the last response (or the refused creation). `more`:
    further Upload-Metadata (staff: platform="1")."""
    created = start_upload(client, len(data), name, **more)
    if created.status_code != 201:
        return created
    location = created["Location"]
    response = created
    for offset in range(0, len(data), chunk):
        response = send_chunk(client, location, offset, data[offset : offset + chunk])
        if response.status_code != 204:
            return response
    return client.get(location)
