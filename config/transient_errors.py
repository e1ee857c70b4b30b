"""A lock conflict the database gave up on is the server being busy, not a bug: 503 with a
Retry-After, never a 500.

PostgreSQL ends one transaction of a deadlock (40P01), a serialization failure (40001) or a lock
timeout (55P03); SQLite says "database is locked" when its busy timeout runs out. The transaction
that met it rolled back, so the client can send the request again (a REST submission with the
same Idempotency-Key never makes two jobs). The lock order in
accounts/ledger.py keeps this from happening on the paths we know; this is the net under them.
"""

from __future__ import annotations

import logging

from django.db import OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.deprecation import MiddlewareMixin

from config.error_bodies import error_body, is_api_path

logger = logging.getLogger(__name__)

TRANSIENT_SQLSTATES = {"40001", "40P01", "55P03"}
RETRY_AFTER_SECONDS = 1


def is_transient(exc: BaseException) -> bool:
    if not isinstance(exc, OperationalError):
        return False
    cause = exc.__cause__
    sqlstate = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    return sqlstate in TRANSIENT_SQLSTATES or "database is locked" in str(exc)


class TransientDatabaseErrorMiddleware(MiddlewareMixin):
    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not is_transient(exception):
            return None
        logger.warning("%s %s answered 503: %s", request.method, request.path, exception)
        detail = "the server is busy (a database lock conflict): send the request again"
        response: HttpResponse
        if is_api_path(request.path):
            response = JsonResponse(error_body(503, detail), status=503)
        else:
            response = HttpResponse(detail, status=503, content_type="text/plain; charset=utf-8")
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
