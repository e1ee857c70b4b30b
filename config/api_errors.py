"""JSON errors for the APIs: every error names the field (or `detail`) and the reason.

Paths under /api/ and /sdapi/ never answer HTML: Django's own error views (404, 400, 403, 500,
a body over DATA_UPLOAD_MAX_MEMORY_SIZE) answer there with the same JSON shape the A1111 API and
DRF use (`error`, `detail`, and `field` where one is to blame). Other paths keep the pages.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework.response import Response
from rest_framework.views import exception_handler

from config.error_bodies import body_too_large, error_body, is_api_path


def json_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    response = exception_handler(exc, context)
    if response is not None and isinstance(response.data, list):
        response.data = {"detail": response.data}
    return response


# Django's error views (handler400 ... handler500 in config/urls.py), JSON on API paths.


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    if not is_api_path(request.path):
        return defaults.bad_request(request, exception)
    if isinstance(exception, RequestDataTooBig):
        return JsonResponse(body_too_large(settings.DATA_UPLOAD_MAX_MEMORY_SIZE), status=413)
    return JsonResponse(error_body(400, "the request could not be read"), status=400)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    if not is_api_path(request.path):
        return defaults.permission_denied(request, exception)
    return JsonResponse(error_body(403, "you may not do that"), status=403)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if not is_api_path(request.path):
        return defaults.page_not_found(request, exception)
    return JsonResponse(error_body(404, f"no such endpoint: {request.path}"), status=404)


def server_error(request: HttpRequest) -> HttpResponse:
    if not is_api_path(request.path):
        return defaults.server_error(request)
    return JsonResponse(error_body(500, "internal server error; it has been logged"), status=500)
