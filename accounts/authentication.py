"""DRF authentication by API token: `Authorization: Bearer <token>`, or HTTP Basic with the
username and a token as the password (what AUTOMATIC1111 clients send with --api-auth)."""

from __future__ import annotations

import base64
import binascii

from django.utils.translation import gettext as _
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from accounts.models import ApiToken, User
from accounts.tiers import remember_loaded_tier


def _token_user(secret: str, username: str | None = None) -> tuple[User, ApiToken]:
    token = ApiToken.authenticate(secret)
    if token is None or (username is not None and token.user.get_username() != username):
        raise exceptions.AuthenticationFailed(_("Invalid or revoked API token."))
    remember_loaded_tier(token.user)  # read with the token: no second query for the tier
    return token.user, token


class BearerTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[User, ApiToken] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed(_("Malformed Bearer header."))
        try:
            secret = header[1].decode()
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed(_("Malformed Bearer header.")) from None
        return _token_user(secret)

    def authenticate_header(self, request: Request) -> str:
        return f'{self.keyword} realm="api"'


class BasicTokenAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[User, ApiToken] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != b"basic":
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed(_("Malformed Basic header."))
        try:
            decoded = base64.b64decode(header[1], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise exceptions.AuthenticationFailed(_("Malformed Basic header.")) from None
        username, sep, secret = decoded.partition(":")
        if not sep:
            raise exceptions.AuthenticationFailed(_("Malformed Basic header."))
        return _token_user(secret, username=username)

    def authenticate_header(self, request: Request) -> str:
        return 'Basic realm="api"'
