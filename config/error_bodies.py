"""The JSON shape of an error on the APIs, shared by Django's error views, the ASGI body limit and
the daphne server (so it imports nothing that needs Django set up)."""

from __future__ import annotations

from typing import Any

API_PREFIXES = ("/api/", "/sdapi/", "/controlnet/")
ERROR_NAMES = {
    400: "BadRequest",
    403: "Forbidden",
    404: "NotFound",
    413: "PayloadTooLarge",
    500: "InternalServerError",
    503: "ServiceUnavailable",
}


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIXES)


def error_body(status: int, detail: str, field: str = "", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"error": ERROR_NAMES.get(status, "HTTPException"), "detail": detail}
    if field:
        body["field"] = field
    return body | extra


def body_too_large(limit: int) -> dict[str, Any]:
    """What a client sent too much for: the whole body, with the limit in bytes."""
    return error_body(
        413,
        f"the request body is larger than {limit} bytes ({limit / 2**20:.0f} MiB); "
        "images count as their base64 text",
        "body",
        limit=limit,
    )
