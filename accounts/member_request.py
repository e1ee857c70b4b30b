"""Request types for views that only a signed-in member reaches (typing only).

`login_required` and DRF's IsAuthenticated already turn anonymous callers away, so in those views
`request.user` is a `User`, never `AnonymousUser`. Annotating the request says so to mypy.
"""

from __future__ import annotations

from django.http import HttpRequest
from rest_framework.request import Request

from accounts.models import User


class MemberRequest(HttpRequest):
    user: User


class MemberApiRequest(Request):
    user: User
