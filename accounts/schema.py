"""OpenAPI descriptions of our token authentication, for drf-spectacular's schema."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.BearerTokenAuthentication"
    name = "bearerToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API token from your account page.",
        }


class BasicTokenScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.BasicTokenAuthentication"
    name = "basicToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "basic",
            "description": "Your username and an API token as the password (A1111 clients).",
        }
