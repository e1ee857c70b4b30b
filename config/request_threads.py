"""Threads for the requests' synchronous work, kept between requests.

Django's ASGI handler opens a `ThreadSensitiveContext` per request: the request's first
thread-sensitive step starts a thread of its own, and at the end another thread is started to
join it. Two thread starts per request, each waiting for the new thread to be scheduled: on a
busy host, milliseconds of every submission. Here a request borrows a one-thread executor that
an earlier request has finished with (asgiref lets a context use an executor it is given and
leaves it running), so it runs on a thread already there. Every request still has a thread to
itself for its lifetime, as before: concurrent requests never queue behind each other.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

# Idle threads kept for the next requests; beyond that, a finished request's thread ends (a
# burst does not leave its threads behind).
KEEP_IDLE = 32


class RequestExecutor(ThreadPoolExecutor):
    """One thread, which remembers its last step: when that is done, all of them are."""

    def __init__(self) -> None:
        super().__init__(max_workers=1, thread_name_prefix="request")
        self.last_step: Future[Any] | None = None

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.last_step = super().submit(fn, *args, **kwargs)
        return self.last_step

    @property
    def busy(self) -> bool:
        return self.last_step is not None and not self.last_step.done()


class RequestThreads:
    """A stack of idle one-thread executors, used from the event loop only (no lock needed)."""

    def __init__(self, keep_idle: int = KEEP_IDLE) -> None:
        self.keep_idle = keep_idle
        self._idle: list[RequestExecutor] = []

    def borrow(self) -> RequestExecutor:
        # The most recently used first: its thread is the likeliest to be warm in the caches.
        if self._idle:
            return self._idle.pop()
        return RequestExecutor()

    def give_back(self, executor: RequestExecutor) -> None:
        """After the request's context closed. A thread still busy with a step its request left
        running (the client went away mid-request) is not lent again: it ends after that step,
        so that no later request waits behind it."""
        if not executor.busy and len(self._idle) < self.keep_idle:
            self._idle.append(executor)
        else:
            executor.shutdown(wait=False)

    @property
    def idle(self) -> int:
        return len(self._idle)
