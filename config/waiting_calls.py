"""The A1111 generation calls (they wait for their job) without a thread each.

Django's ASGI handler gives every request its own thread context (`ThreadSensitiveContext`):
the first thread-sensitive step (any MiddlewareMixin middleware) starts a thread, kept until the
response is sent. For a txt2img call that waits minutes for its job, that is one idle thread per
waiting client. These paths skip the per-request context: their middleware steps run on
asgiref's one shared thread (each is short), their own work on the pool
(`generation.a1111.threads`), and the wait is a suspended coroutine.
"""

from __future__ import annotations

from typing import Any

WAITING_PATHS = (
    "/sdapi/v1/txt2img",
    "/sdapi/v1/img2img",
    "/sdapi/v1/extra-single-image",
    "/sdapi/v1/extra-batch-images",
)


class WaitingCallsWithoutThreads:
    def __init__(self, django_app: Any) -> None:
        self.django_app = django_app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].rstrip("/") in WAITING_PATHS:
            await self.django_app.handle(scope, receive, send)
        else:
            await self.django_app(scope, receive, send)
