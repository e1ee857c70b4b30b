"""drf-tus's header middleware, only for tus requests, answering 400 to a malformed number.

drf-tus parses `Upload-Length`, `Upload-Offset` and `Upload-Defer-Length` with a bare `int()`,
which would make a typo a 500; and it would stamp `Tus-Resumable` on every response."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse
from rest_framework_tus.middleware import TusMiddleware


class TusHeaderMiddleware(TusMiddleware):
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        super().__init__(get_response)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if "HTTP_TUS_RESUMABLE" not in request.META:
            return self.get_response(request)
        try:
            refused = self.process_request(request)
        except ValueError:
            refused = JsonResponse(
                {
                    "detail": "Upload-Length, Upload-Offset and Upload-Defer-Length must be "
                    "whole numbers, Upload-Metadata comma-separated 'key base64' pairs"
                },
                status=400,
            )
        response = refused or self.get_response(request)
        return self.process_response(request, response)
