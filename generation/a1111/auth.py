"""Who is calling: HTTP Basic (username + API token, what A1111 clients send with --api-auth) or
a Bearer token, through the same authentication classes as the REST API. No anonymous access;
a suspended member's tokens no longer authenticate (`ApiToken.objects.active()`)."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest
from django.utils.translation import gettext as _
from rest_framework import exceptions
from rest_framework.request import Request

from accounts.authentication import BasicTokenAuthentication, BearerTokenAuthentication
from generation.a1111.errors import A1111Error

AUTHENTICATORS = (BasicTokenAuthentication(), BearerTokenAuthentication())


def authenticate_sync(request: HttpRequest) -> Any:
    # The DRF classes only read request.META, which DRF's Request wrapper passes through.
    for authenticator in AUTHENTICATORS:
        try:
            found = authenticator.authenticate(Request(request))
        except exceptions.AuthenticationFailed as exc:
            raise A1111Error(401, str(exc.detail)) from None
        if found is not None:
            return found[0]
    raise A1111Error(
        401, _("Authentication required: HTTP Basic with your username and an API token.")
    )


async def authenticate(request: HttpRequest) -> Any:
    return await sync_to_async(authenticate_sync)(request)
