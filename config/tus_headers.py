"""drf-tus's header middleware, only for tus requests, answering 400 to a malformed number.

drf-tus parses `Upload-Length`, `Upload-Offset` and `Upload-Defer-Length` with a bare `int()`,
which would make a typo a 500; and it would stamp `Tus-Resumable` on every response.

Async-capable: a sync-only middleware would make Django run every request below it in a thread
(each waiting A1111 call would hold one). Tus requests themselves are short and run their checks
in a thread; every other request passes straight through on the event loop."""

from __future__ import annotations

from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse
from rest_framework_tus.middleware import TusMiddleware


class TusHeaderMiddleware(TusMiddleware):
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Any) -> None:
        super().__init__(get_response)
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        if "HTTP_TUS_RESUMABLE" not in request.META:
            return self.get_response(request)
        response = self._refusal(request) or self.get_response(request)
        return self.process_response(request, response)

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        if "HTTP_TUS_RESUMABLE" not in request.META:
            passed: HttpResponse = await self.get_response(request)
            return passed
        refused = await sync_to_async(self._refusal)(request)
        response = refused or await self.get_response(request)
        processed: HttpResponse = await sync_to_async(self.process_response)(request, response)
        return processed

    def _refusal(self, request: HttpRequest) -> HttpResponse | None:
        try:
            refused: HttpResponse | None = self.process_request(request)
        except ValueError:
            refused = JsonResponse(
                {
                    "detail": "Upload-Length, Upload-Offset and Upload-Defer-Length must be "
                    "whole numbers, Upload-Metadata comma-separated 'key base64' pairs"
                },
                status=400,
            )
        return refused
