"""A tus client over the Django test client: enough of the protocol for the tests' uploads."""

from __future__ import annotations

import base64
from typing import Any

TUS = {"HTTP_TUS_RESUMABLE": "1.0.0"}
UPLOADS = "/api/v1/own-models/uploads/"


def start_upload(client: Any, length: int, name: str) -> Any:
    metadata = "name " + base64.b64encode(name.encode()).decode()
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


def upload(client: Any, data: bytes, name: str, chunk: int = 64) -> Any:
    """The whole file in chunks; returns the last response (or the refused creation)."""
    created = start_upload(client, len(data), name)
    if created.status_code != 201:
        return created
    location = created["Location"]
    response = created
    for offset in range(0, len(data), chunk):
        response = send_chunk(client, location, offset, data[offset : offset + chunk])
        if response.status_code != 204:
            return response
    return client.get(location)
