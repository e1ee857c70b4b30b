from __future__ import annotations

from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import Resolver404, resolve
from django.views.decorators.csrf import csrf_exempt


def home(request: HttpRequest) -> HttpResponse:
    return render(request, "home.html")


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness for load balancers and compose health checks: the database answers."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})


@csrf_exempt  # the view it hands over to applies its own CSRF rules (DRF's, for the API)
def api_without_slash(request: HttpRequest, rest: str) -> HttpResponse:
    """`/api/v1/me` as `/api/v1/me/`: clients often drop the slash, and Django's answer, an empty
    301, tells a script nothing (and a POST cannot follow it)."""
    try:
        match = resolve(request.path_info + "/")
    except Resolver404:
        raise Http404 from None
    return match.func(request, *match.args, **match.kwargs)
