"""Opens the per-request tier memo (accounts/request_memo.py) around every request.

Async-capable like every middleware here, so waiting A1111 calls hold no thread; a sync view
runs in a thread with a copy of this context, which shares the same memo dict.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

from accounts.request_memo import memo_scope


class RequestMemoMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if self.is_async:
            return self.__acall__(request)
        with memo_scope():
            return self.get_response(request)

    async def __acall__(self, request: Any) -> Any:
        with memo_scope():
            return await self.get_response(request)
